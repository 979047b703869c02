"""SQuAD closed-book knowledge incorporation, SEAL protocol (paper Sec. 5.1.1, Appendix D), on the PaST engine.

Passages are JSON: `[{"title", "context", "questions": [{"question", "answer"}]}]`. The shipped files
(pastkit/data/squad, see its README) are the paper's splits; any file of the same format works, so a
user can test PaST on documents of their own.

What this file gives the engine (`pastkit.past`): source rounds (disjoint slices of SEAL's 100 training
passages), target units (all target passages at once in the CPT regime, one passage at a time with LoRA in
the single-passage regime), SFT phases (passages, plus the model's own implications, D.4.1), the RL task
(closed-book questions, D.4.2 prompt, reward = the judge) and scoring (greedy closed-book answers, judged).
Table 1 and the orthogonality pairs of notebooks 01/02 are assembled from engine results in `table1`.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import pandas as pd

from ..config import PastParams
from ..console import say
from ..evaluation import summarize
from ..generation import generate
from ..judges import STRICT_METRICS, contains_gold, make_judge
from ..knowledge import SFTSpec
from ..past import Domain, Engine, SFTPhase, digest
from ..skill_rl import RLTask, closed_book_task, rl_split

DATA = Path(__file__).resolve().parent.parent / "data" / "squad"
SOURCE_ROUNDS = ["train_round1_50", "train_round2_50"]  # Appendix D.1: K=2 disjoint rounds of N=50 passages
EVAL_SET = "val_seal200"  # SEAL's n=200 evaluation subset

# Appendix D.4.1, verbatim: the implication prompt for self-generated SFT data.
IMPLICATIONS_PROMPT = ("Let's read the following passage and produce a list of implications derived directly "
                       "or indirectly from the content.\nPassage:\n{passage}\nImplications:\n")
# Appendix D.4.2, verbatim: the closed-book QA prompt for RL rollouts and evaluation.
QA_PROMPT = "Let's answer a question directly and concisely.\nQuestion: {question}\nAnswer:"


def load_passages(name_or_path: str | Path) -> list[dict]:
    """Passages from a shipped split name (e.g. "val_seal200") or a JSON file of the same format."""
    path = DATA / f"{name_or_path}.json" if (DATA / f"{name_or_path}.json").exists() else Path(name_or_path)
    if not path.exists():
        shipped = ", ".join(sorted(p.stem for p in DATA.glob("*.json")))
        raise FileNotFoundError(f"no passages at {name_or_path!r} (shipped splits: {shipped}; or give a path)")
    try:
        passages = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from None
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not JSON ({e})") from None
    if not isinstance(passages, list):
        raise ValueError(f"{path}: expected a JSON array of passages")
    for i, p in enumerate(passages):
        if not isinstance(p, dict) or not isinstance(p.get("context"), str) or not isinstance(
                p.get("questions"), list):
            raise ValueError(f"{path}: passage {i} needs 'context' (str) and 'questions' (list)")
        for q in p["questions"]:
            if not isinstance(q, dict) or not {"question", "answer"} <= set(q):
                raise ValueError(f"{path}: passage {i} has a question without 'question'/'answer': {q!r}")
            if not all(isinstance(q[k], str) and q[k].strip() for k in ("question", "answer")):
                raise ValueError(f"{path}: passage {i} has a question or answer that is not a non-empty string: {q!r}")
        p.setdefault("title", "")
    return passages


# ---------------------------------------------------------------------------------------------------
# Splits and SEAL-style training documents
# ---------------------------------------------------------------------------------------------------

def source_rounds(n_source: int, rounds: int) -> list[list[dict]]:
    """K disjoint source sets: slices of the 100 shipped source passages (n=50, K=2 is the paper's split)."""
    pool = load_passages(SOURCE_ROUNDS[0]) + load_passages(SOURCE_ROUNDS[1])
    if n_source * rounds > len(pool):
        raise ValueError(f"rounds × n_source = {rounds * n_source} exceeds the {len(pool)} shipped source passages")
    return [pool[k * n_source:(k + 1) * n_source] for k in range(rounds)]


def questions_of(passages: list[dict]) -> list[dict]:
    return [{"question": q["question"], "answer": q["answer"], "title": p["title"]}
            for p in passages for q in p["questions"]]


def passage_document(p: dict) -> str:
    return f"{p['title']}\n{p['context']}"


def cpt_documents(passages: list[dict], generations: list[list[str]] | None) -> list[str]:
    """Multi-passage regime: each passage, plus each whole implication generation as its own document."""
    docs = [passage_document(p) for p in passages]
    for p, gens in zip(passages, generations or []):
        docs += [f"{p['title']}\n{g.strip()}" for g in gens if g.strip()]
    return docs


def single_documents(p: dict, generations: list[str] | None) -> list[str]:
    """Single-passage regime (SEAL): title + each implication line as a sequence, plus the passage."""
    lines = [line.strip() for g in generations or [] for line in g.splitlines() if line.strip()]
    return [f"{p['title']}\n{line}" for line in lines] + [passage_document(p)]


# ---------------------------------------------------------------------------------------------------
# Parameters
# ---------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class SquadParams(PastParams):
    """PaST on SQuAD (paper Sec. 5.1.1, Appendix D). Defaults are the cpu profile."""

    seeds: list = field(default_factory=lambda: [0, 1, 2])  # Table 1 over three seeds: one seed cannot tell
    n_source: int = 6                           # passages per round (paper 50), disjoint across rounds
    n_target: int = 16                          # target passages for the CPT regime (paper 200 / 2067)
    target_passages: str = "val_seal200"        # shipped split name or a path to passages JSON of your own
    regimes: list = field(default_factory=lambda: ["cpt", "single"])  # "cpt" (n passages, full FT), "single" (LoRA)
    n_single: int = 8                           # passages evaluated one at a time in the single regime (paper 200)
    n_implications: int = 1                     # self-generated implication samples per passage (paper D.2: 5)
    implication_tokens: int = 128               # max new tokens per implication sample
    sft_sentences: bool = True                  # also each passage sentence as its own sequence (cpu; paper: no)
    max_seq_len: int = 512                      # SFT sequence length in tokens (paper Table 8: 2048)
    cpt_epochs: int = 4                         # CPT full-FT epochs (paper Table 8: 1, on far more data)
    cpt_lr: float = 2e-4                        # CPT learning rate (paper Table 8: 7e-5)
    cpt_batch: int = 8                          # per-device batch (paper Table 8: 4)
    cpt_grad_accum: int = 1                     # gradient accumulation (paper Table 8: 2)
    lora_r: int = 32                            # single-passage LoRA rank (paper Table 8)
    lora_alpha: int = 64                        # LoRA alpha (paper Table 8)
    single_epochs: int = 5                      # single-passage epochs (paper Table 8: 10)
    single_lr: float = 1e-3                     # single-passage learning rate (paper Table 8)
    eval_max_new_tokens: int = 48               # greedy answer length at evaluation
    # GRPO on SQuAD, chosen on the source rounds (bench/rl_gate.py, 3 seeds): batched steps whose reward
    # rises in every round, where 24 one-prompt steps' did not; about the same time
    rl_prompts: int = 16                        # source questions GRPO asks per round; the rest are RL's gate
    rl_prompts_per_step: int = 8                # prompts per optimizer step, rolled out as one batch (paper: 32)
    rl_epochs: int = 6                          # passes over them: 12 steps (paper Table 9: 15)
    rl_lr: float = 5e-05                        # (paper Table 9: 1e-6, over thousands of steps)
    rl_beta: float = 0.0                        # no KL term, no reference-model pass (paper Table 9: 0.001)
    rl_reward: str = "judge"                    # "judge" (the params' judge) or "contains" (gold answer contained)

    def __post_init__(self):
        super().__post_init__()
        if not self.regimes or not set(self.regimes) <= {"cpt", "single"}:
            raise ValueError(f"regimes={self.regimes!r}: 'cpt' and/or 'single'")
        if self.rl_reward not in ("judge", "contains"):
            raise ValueError(f"rl_reward={self.rl_reward!r}: 'judge' or 'contains'")

    def check_inputs(self) -> None:
        source_rounds(self.n_source, self.rounds)
        passages = load_passages(self.target_passages)
        need = max(self.n_target if "cpt" in self.regimes else 0, self.n_single if "single" in self.regimes else 0)
        if len(passages) < need:
            raise ValueError(f"{self.target_passages}: has {len(passages)} passages, but n_target/n_single ask for "
                             f"{need}")


# ---------------------------------------------------------------------------------------------------
# The benchmark: what the engine asks of it
# ---------------------------------------------------------------------------------------------------

BASE, PASSAGE, SYNTH = "Base", "Train on Passage", "Train on Passage + Synthetic"
VARIANTS = ("source", "target", "passage_only", "sentences")  # SFT data: see Squad.sft_phases
# Paper Table 1 (Qwen2.5-7B, GPT-4.1 judge), reported, not measured here: {method: {regime: accuracy %}}.
# Baselines there are SEAL's numbers; "PaST 50" is one round, "PaST 50×2" two rounds.
PAPER_TABLE1 = {BASE: {"single": 32.7, "cpt": 32.7}, PASSAGE: {"single": 33.5, "cpt": 36.0},
                SYNTH: {"single": 39.7, "cpt": 50.6}, "PaST (1 round)": {"single": 50.8, "cpt": 58.9},
                "PaST (2 rounds)": {"single": 56.9, "cpt": 58.7}}


class ContainedReward:
    """SQuAD's optional RL reward: the strict metric `contains_gold` as a 0/1 score, a deterministic stand-in for
    the paper's binary judge, which accepts extra words as long as the gold answer is conveyed (token F1 pays a
    shorter answer whether or not it holds the gold one). Evaluation keeps the params' judge."""

    name = "contains"

    def score(self, question: str, gold: str, pred: str) -> float:
        return contains_gold(gold, pred)

    def describe(self) -> dict:
        return {"judge": self.name, "metric": "first answer line contains the normalised gold answer"}


def past_label(k: int) -> str:
    return f"PaST ({k} round{'s' if k > 1 else ''})"


def passage_domain(name: str, passages: list[dict], regime: str) -> Domain:
    """SQuAD passages as a domain of the engine, keyed by their text and questions and the regime."""
    return Domain(name, {"passages": passages, "regime": regime},
                  digest([regime, [(p["title"], p["context"], p["questions"]) for p in passages]]))


class Squad:
    """SQuAD for the PaST engine (see the module docstring)."""

    name = "squad"
    params = SquadParams
    code = ("pastkit.benchmarks.squad",)

    def judge(self, p: SquadParams):
        return make_judge(p.judge)

    def validation(self, p: SquadParams) -> None:
        """No RL checkpoint selection on SQuAD (the paper selects on LooGLE only); 05 chooses λ on its own
        validation passages (`ablations.squad_validation`)."""
        return None

    def source_rounds(self, p: SquadParams) -> list[Domain]:
        rounds = enumerate(source_rounds(p.n_source, p.rounds), 1)
        return [passage_domain(f"source round {k}", ps, "cpt") for k, ps in rounds]

    def target_units(self, p: SquadParams, regime: str) -> list[Domain]:
        passages = [{**x, "pid": i} for i, x in enumerate(load_passages(p.target_passages))]
        if regime == "cpt":
            return [passage_domain("target", passages[:p.n_target], "cpt")]
        return [passage_domain(f"target passage {x['pid']}", [x], "single") for x in passages[:p.n_single]]

    def implications(self, engine: Engine, passages: list[dict]) -> list[list[str]]:
        """k self-generated implication samples per passage (D.4.1 prompt), by the base model."""
        p = engine.p

        def build(tmp: Path):
            gens = generate(engine.base, [IMPLICATIONS_PROMPT.format(passage=x["context"]) for x in passages],
                            max_new_tokens=p.implication_tokens, samples=p.n_implications, temperature=1.0,
                            top_p=0.95, seed=engine.seed, use_vllm=p.use_vllm, desc="implications",
                            cpu_bf16=p.cpu_bf16)
            (tmp / "implications.json").write_text(json.dumps(
                [{"title": x["title"], "generations": g} for x, g in zip(passages, gens)], indent=1))

        key = {"base": engine.base_key, "passages": digest([x["context"] for x in passages]), "k": p.n_implications,
               "tokens": p.implication_tokens}
        stage = engine.stage("implications", key, build,
                             expect=("implications.json",), code=("pastkit.generation", *self.code))
        return [r["generations"] for r in json.loads((stage.path / "implications.json").read_text())]

    def sft_phases(self, engine: Engine, domain: Domain, variant: str) -> list[SFTPhase]:
        """One phase. variant "source" and "target": passages + implications (the paper's), plus each passage
        sentence as a sequence of its own when `sft_sentences` (the cpu profile: without them SmolLM2 learns
        almost no facts, README); "passage_only": passages alone; "sentences": passages + their sentences."""
        p, passages, regime = engine.p, domain.data["passages"], domain.data["regime"]
        if variant not in VARIANTS:
            raise ValueError(f"unknown SFT data variant {variant!r}; known: {VARIANTS}")
        gens = None if variant == "passage_only" else [split_sentences(x["context"]) for x in passages] \
            if variant == "sentences" else self.implications(engine, passages)
        if variant in ("source", "target") and p.sft_sentences:
            gens = [g + split_sentences(x["context"]) for g, x in zip(gens, passages)]
        if regime == "single":
            docs = single_documents(passages[0], gens[0] if gens else None)
            spec = SFTSpec(p.single_epochs, p.single_lr, 1, 1, p.max_seq_len, p.lora_r, p.lora_alpha)
        else:
            docs = cpt_documents(passages, gens)
            spec = SFTSpec(p.cpt_epochs, p.cpt_lr, p.cpt_batch, p.cpt_grad_accum, p.max_seq_len)
        return [SFTPhase(f"{regime}/{variant}", [{"text": d} for d in docs], spec)]

    def rl_task(self, engine: Engine, domain: Domain) -> RLTask:
        """Closed-book questions of the domain (D.4.2 prompt); reward = the judge's score of the answer, or with
        `rl_reward: contains` whether its first line holds the gold answer (`ContainedReward`)."""
        judge = engine.judge if engine.p.rl_reward == "judge" else ContainedReward()
        return closed_book_task(questions_of(domain.data["passages"]), QA_PROMPT, judge, engine.seed,
                                engine.p.rl_prompts)

    def gate_unit(self, engine: Engine, domain: Domain) -> Domain | None:
        """The source round's questions that RL did not train on (`rl_split`, as `rl_task` chose): RL's gate.
        None when RL trains on every question of the round (`rl_prompts` at least the round's questions)."""
        passages = domain.data["passages"]
        _, rest = rl_split(questions_of(passages), engine.seed, engine.p.rl_prompts)
        keep = {(q["title"], q["question"]) for q in rest}
        held = [{**x, "questions": [q for q in x["questions"] if (x["title"], q["question"]) in keep]}
                for x in passages]
        held = [x for x in held if x["questions"]]
        if not held:
            return None
        return Domain(f"{domain.name}, held out from RL", {**domain.data, "passages": held},
                      f"{domain.key}/held-out/seed-{engine.seed}/rl-{engine.p.rl_prompts}")

    def scoring(self, engine: Engine) -> dict:
        return {"prompt": QA_PROMPT, "decoding": "greedy", "max_new_tokens": engine.p.eval_max_new_tokens}

    def score(self, engine: Engine, model, unit: Domain, split: str) -> pd.DataFrame:
        """Greedy closed-book answers to the unit's questions, each scored by the judge."""
        passages = unit.data["passages"]
        items = [(x.get("pid", i), j, q) for i, x in enumerate(passages) for j, q in enumerate(x["questions"])]
        preds = generate(None, [QA_PROMPT.format(question=q["question"]) for *_, q in items],
                         max_new_tokens=engine.p.eval_max_new_tokens, desc="answer", model_and_tok=model.load())
        return pd.DataFrame([{"item": f"{pid}:{j}", "document": pid, "question": q["question"], "gold": q["answer"],
                              "prediction": pred[0], "score": engine.judge.score(q["question"], q["answer"], pred[0]),
                              **{m: f(q["answer"], pred[0]) for m, f in STRICT_METRICS.items()}}
                             for (pid, j, q), pred in zip(items, preds)])


@dataclass(frozen=True)
class OrthogonalityParams(SquadParams):
    """Notebook 01: SQuAD's parameters (its stages are 02's), and a mode that trains nothing."""

    seeds: list = field(default_factory=lambda: [0])  # the figures are one seed's; 02 trains the others
    explore: bool = False                       # draw every heatmap from saved per-tensor tables; train nothing
    explore_from: str = "figures"               # the results folder whose cosine tables explore draws from

    # exploring writes nothing, so 01 shares 02's results folder (and stages) whatever these say
    UNHASHED: ClassVar[frozenset] = frozenset({"results_dir", "explore", "explore_from"})

    def check_inputs(self) -> None:
        if self.explore:  # nothing is trained: only the tables must be there
            from ..orthogonality import load_pairs
            load_pairs(self.explore_from, "01_orthogonality")
        else:
            super().check_inputs()


# ---------------------------------------------------------------------------------------------------
# The knowledge probe: does a knowledge SFT teach facts at all?
# ---------------------------------------------------------------------------------------------------

PROBE = DATA.parent / "probe" / "probe.json"  # invented passages: facts no model can know (see its README)


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in re.split(r"(?<=[.!?])\s+", text) if s.strip()]


def knowledge_probe(params: SquadParams, regime: str = "single", variant: str = "target", seed: int = 0,
                    log=say) -> tuple[pd.DataFrame, pd.DataFrame]:
    """How many of the probe's invented facts a knowledge SFT recovers, closed-book, against the base model.

    The probe's facts are invented, so the base model scores about 0 on the strict metric by construction and any
    gain is knowledge the SFT put in. `regime` and `variant` are those of Table 1 ("single": LoRA per passage;
    "cpt": all passages at once; variants "passage_only", "target" = passage + implications, "sentences" =
    passage + each of its sentences). Returns (summary rows, per-question answers).
    """
    engine = Engine(Squad(), params, seed, log)
    passages = [{**x, "pid": f"probe-{i}"} for i, x in enumerate(load_passages(PROBE))]
    units = [passage_domain("probe", passages, "cpt")] if regime == "cpt" else \
        [passage_domain(f"probe passage {x['pid']}", [x], "single") for x in passages]
    frames = []
    for unit in units:
        frames.append(engine.answers(engine.base_model(), unit).assign(method=BASE))
        frames.append(engine.answers(engine.adapt(unit, "target_sft", variant=variant), unit)
                      .assign(method=f"SFT ({regime}, {variant})"))
    answers = pd.concat(frames, ignore_index=True).assign(seed=seed)
    return summarize(answers, baseline=BASE, metrics=("contains", "exact", "score")), answers
