"""PaST, the method (paper Sec. 4, Algorithm 1): source distillation, skill vectors, transfer to a target.

This module knows no benchmark. A benchmark (see `benchmarks`) says what its documents, SFT phases, RL task
and scoring are; the `Engine` runs the method on top, every step a cached, verified stage (`stages`):

    Algorithm 1   for k = 1..K over disjoint source domains S_k:
                    θ_sft_k  = SFT(θ_base, S_k)
                    θ_init_k = θ_sft_k + v_{k−1}     (θ_sft_1 for k = 1)
                    θ_rl_k   = GRPO(θ_init_k, tasks of S_k)
                    v_k      = θ_rl_k − θ_sft_k
    Transfer      a target domain T and a skill vector v, by one of the paper's strategies (Table 4).

Transfer strategies are data (`STRATEGIES`), not subclasses: where target SFT starts, and whether λ·v is
added after it. A model the engine hands back is a `Model`: a key (what produced it) and a loader.
"""

from __future__ import annotations

import csv
import hashlib
import importlib
import inspect
import json
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from math import comb
from pathlib import Path
from typing import Protocol, runtime_checkable

import pandas as pd

from .config import PastParams
from .console import say
from .generation import load_model
from .knowledge import SFTSpec, train_sft
from .models import fingerprint, resolve
from .outputs import OutputError
from .places import results_folder, runs_dir
from .skill_rl import GRPOSpec, RLTask, train_grpo
from .skill_vector import DegenerateWarning, SkillVector, add_scaled_, inject
from .stages import Stage, run_stage, stage_dir, stage_inputs

VECTOR_FILE = "vector.safetensors"
RANDOM_CONTROL = "+ λ·random, same norm per tensor"  # Engine.random_control's row in a results table
SFT_FULL, SFT_LORA = "sft-full", "sft-lora"  # the stage names of a full and a LoRA SFT phase


@dataclass(frozen=True)
class Strategy:
    """How a skill vector reaches the target model (paper Table 4)."""

    name: str
    label: str
    start: str       # where target SFT starts: "base", "base+v" (θ_base + λ·v) or "source_rl" (θ_S^rl)
    post_hoc: bool   # add λ·v after target SFT


STRATEGIES = {s.name: s for s in [
    Strategy("target_sft", "Target SFT", "base", False),
    Strategy("post_hoc", "Post-hoc composition (PaST)", "base", True),
    Strategy("pre_injection", "Pre-injection", "base+v", False),
    Strategy("sequential", "Sequential fine-tuning", "source_rl", False),
]}


def get_strategy(name: str) -> Strategy:
    if name not in STRATEGIES:
        raise ValueError(f"unknown transfer strategy {name!r}; known: {sorted(STRATEGIES)}")
    return STRATEGIES[name]


@dataclass(frozen=True)
class Domain:
    """A set of documents (source round, target unit, validation split): the benchmark's own data plus a key."""

    name: str
    data: object
    key: str


@dataclass(frozen=True)
class SFTPhase:
    """One SFT run: records in one of trl's formats (text, prompt-completion, messages) and its spec."""

    name: str
    records: list
    spec: SFTSpec


@dataclass
class Round:
    """One round of Algorithm 1. `selection`: the validation score of each kept RL checkpoint and the step
    whose skill vector was taken (paper E.4), when the benchmark has a validation split and checkpoints are kept."""

    k: int
    domain: Domain
    sft: Stage
    init: Stage
    rl: Stage
    vector: Stage
    selection: dict | None = None


@dataclass
class Model:
    """A model the engine can evaluate: what produced it (hashed into downstream keys) and how to load it."""

    key: dict
    load: Callable
    stage: Stage | None = None  # the stage whose model/ dir holds it, if it is on disk


@runtime_checkable
class Benchmark(Protocol):
    """What the engine asks of a benchmark: every method is required, so a benchmark that misspells one is
    refused when its `Engine` is made, instead of silently losing what that method drives (`validation` drives
    RL checkpoint selection; `gate_unit` RL's gate). `params` is its parameters class, `code` the modules whose
    source keys its stages."""

    name: str
    params: type
    code: tuple

    def judge(self, p: PastParams):
        """The judge of its answers (`judges.make_judge`, or ToolBench's solution judge)."""

    def source_rounds(self, p: PastParams) -> list[Domain]:
        """The K source rounds of Algorithm 1, disjoint."""

    def validation(self, p: PastParams) -> Domain | None:
        """Documents on which kept RL checkpoints are compared (paper E.4), or None."""

    def target_units(self, p: PastParams, *args) -> list[Domain]:
        """The units a target SFT is trained and scored on (SQuAD takes the regime)."""

    def sft_phases(self, engine: Engine, domain: Domain, variant: str) -> list[SFTPhase]:
        """The knowledge SFT runs of a domain, in order."""

    def rl_task(self, engine: Engine, domain: Domain) -> RLTask:
        """GRPO's prompts and rewards on a source round."""

    def gate_unit(self, engine: Engine, domain: Domain) -> Domain | None:
        """The source round's items RL never trained on (never a test item), for RL's gate; None if none."""

    def scoring(self, engine: Engine) -> dict:
        """What keys a scoring stage besides the model and unit (prompts, decoding, judge settings)."""

    def score(self, engine: Engine, model, unit: Domain, split: str) -> pd.DataFrame:
        """One row per item: `document`, `item`, `score` (0-1) and the strict metrics it has."""


def check_benchmark(benchmark) -> None:
    """Refuse an object that does not keep the `Benchmark` contract, naming what it lacks: an attribute or method,
    or a method whose leading parameters are not the contract's."""
    methods = [name for name, value in vars(Benchmark).items() if inspect.isfunction(value) and name[0] != "_"]
    problems = [f"no {name}" for name in [*Benchmark.__annotations__, *methods] if not hasattr(benchmark, name)]
    for name in methods:
        if hasattr(benchmark, name):
            want = [q for q in inspect.signature(getattr(Benchmark, name)).parameters if q not in ("self", "args")]
            have = list(inspect.signature(getattr(benchmark, name)).parameters)[:len(want)]
            if have != want:
                problems.append(f"{name}({', '.join(have)}) where the contract says {name}({', '.join(want)})")
    if problems:
        raise TypeError(f"{type(benchmark).__name__} is not a pastkit benchmark: {'; '.join(problems)} "
                        "(see pastkit.past.Benchmark)")


def code_version(*modules) -> str:
    """A hash of the source of the modules that build a stage: edited code never reuses an old result."""
    h = hashlib.sha256()
    for m in modules:
        h.update(inspect.getsource(importlib.import_module(m) if isinstance(m, str) else m).encode())
    return h.hexdigest()[:12]


def digest(obj) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:16]


class Engine:
    """PaST for one benchmark and one seed. Every method returns finished (possibly cached) stages."""

    def __init__(self, benchmark: Benchmark, params: PastParams, seed: int, log=say):
        check_benchmark(benchmark)
        params.check_inputs()
        self.bench, self.p, self.seed, self.log = benchmark, params, seed, log
        self.base = Path(resolve(params.model))
        for what, folder in (("the stage cache (PASTKIT_RUNS)", runs_dir()), ("the results folder",
                                                                               results_folder(params))):
            if self.base.resolve() in [folder.resolve(), *folder.resolve().parents]:
                raise OutputError(f"{what} {folder} lies inside the model dir {self.base}, an input: point it "
                                  "elsewhere")
        self.base_key = {"model": params.model, "content": fingerprint(self.base)}
        self.judge = benchmark.judge(params)
        self.flags: list[str] = []  # degenerate results met on the way, said out loud by the notebooks
        self._norms: dict[str, float] = {}  # skill-vector stage key -> ‖v‖

    # -- building blocks ------------------------------------------------------------------------------
    def stage(self, name: str, inputs: dict, build, expect: tuple[str, ...], code: tuple = (), check=None) -> Stage:
        """A cached stage whose key includes the seed, the precision and the source of the code that builds it."""
        return run_stage(name, {**inputs, "seed": self.seed, "cpu_bf16": self.p.cpu_bf16,
                                "code": code_version(*code)}, build, self.log,
                         expect=expect, check=check)

    def base_model(self) -> Model:
        return Model({"model": self.base_key}, lambda: load_model(self.base))

    def sft(self, start: Stage | None, phases: list[SFTPhase]) -> Stage:
        """The phases in order, each starting from the previous one's model (the first from `start` or base)."""
        for phase in phases:
            start = self._sft_one(start, phase)
        return start

    def _sft_one(self, start: Stage | None, phase: SFTPhase) -> Stage:
        start_dir = start.path / "model" if start else self.base
        kind = SFT_LORA if phase.spec.lora_r else SFT_FULL
        spec = replace(phase.spec, cpu_bf16=self.p.cpu_bf16)
        stage = self.stage(kind, {"start": start.key if start else self.base_key, "phase": phase.name,
                                  "records": digest(phase.records), "spec": spec.__dict__},
                           lambda tmp: train_sft(start_dir, phase.records, tmp / "model", spec, self.seed, self.log),
                           expect=("model",), code=("pastkit.knowledge", "pastkit.training"))
        summary = self.summary(stage)
        if not summary["loss_fell"]:
            self.flag(f"SFT phase {phase.name!r} ({stage.path.name}): the training loss did not fall "
                       f"({summary['loss_first']} → {summary['loss_last']})")
        return stage

    def with_vector(self, model: Stage | None, vector: Stage, lam: float) -> Stage:
        """θ + λ·v on disk, through the vector core (`inject`), for a stage that trains from it (round k's RL,
        pre-injection's SFT); model None is the base model. A model only scored is composed in memory
        (`model_of`)."""
        src = model.path / "model" if model else self.base

        def build(tmp: Path):
            with warnings.catch_warnings():  # a zero vector is flagged where it was made (`vector`), on every read
                warnings.simplefilter("ignore", DegenerateWarning)
                inject(src, vector.path / VECTOR_FILE, tmp / "model", lam=lam)

        return self.stage("inject", {"model": model.key if model else self.base_key, "vector": vector.key,
                                     "lam": lam}, build,
                          expect=("model",), code=("pastkit.skill_vector", "pastkit.checkpoint"))

    def grpo(self, init: Stage, task: RLTask) -> Stage:
        p = self.p
        per_step = min(p.rl_prompts_per_step, len(task.prompts))  # fewer prompts than a step: one step of them all
        spec = GRPOSpec(p.rl_epochs, p.rl_lr, p.rl_group, per_step, p.rl_beta, p.rl_temperature,
                        p.rl_top_p, p.rl_top_k, p.rl_max_new_tokens, p.use_vllm, p.rl_save_every,
                        p.rl_schedule, p.cpu_bf16, p.rl_lora_r)
        stage = self.stage("grpo", {"init": init.key, "task": task.describe, "prompts": digest(task.prompts),
                                    "columns": digest(task.columns), "spec": spec.__dict__},
                           lambda tmp: train_grpo(init.path / "model", task, tmp / "model", spec, self.seed, self.log),
                           expect=("model",), code=("pastkit.skill_rl", "pastkit.training", *self.bench.code))
        summary = self.summary(stage)
        if summary["reward_never_varied"]:
            self.flag(f"GRPO ({stage.path.name}): the reward never varied within a group, so every advantage was "
                       "0 and RL changed nothing but what the KL term moved")
        return stage

    def sft_steps(self, stage: Stage) -> int:
        """Optimizer steps of an SFT stage together with the SFT phases it continued (LooGLE's phase 1 before
        phase 2), so a comparison of "equal steps" counts every phase. Stops at the base model or at a stage
        that is not SFT (an injected or RL model)."""
        steps, start = self.summary(stage)["steps"], stage_inputs(stage)["start"]
        if start != self.base_key:
            for kind in (SFT_FULL, SFT_LORA):
                if (path := stage_dir(kind, start)).is_dir():
                    return steps + self.sft_steps(Stage(kind, start, path))
        return steps

    @staticmethod
    def summary(stage: Stage) -> dict:
        """What a training stage (SFT or GRPO) reported about its own run: its model/summary.json."""
        return json.loads((stage.path / "model" / "summary.json").read_text())

    def vector_norm(self, stage: Stage) -> float:
        """‖v‖ of a skill-vector stage, read once per engine (it streams the whole vector)."""
        if stage.key not in self._norms:
            self._norms[stage.key] = SkillVector.load(stage.path / VECTOR_FILE).norm()
        return self._norms[stage.key]

    def vector(self, rl: Stage, sft: Stage, step: str | None = None) -> Stage:
        """v = θ_rl − θ_sft (θ_rl at a kept checkpoint "step-N" if given), saved; a zero vector is flagged."""
        policy = rl.path / "model" / ("checkpoints/" + step if step else "")

        def build(tmp: Path):
            with warnings.catch_warnings():  # a zero vector is flagged below, on every read, not only when built
                warnings.simplefilter("ignore", DegenerateWarning)
                SkillVector.extract(policy, sft.path / "model").save(tmp / VECTOR_FILE)

        stage = self.stage("skill-vector", {"rl": rl.key, "sft": sft.key, **({"step": step} if step else {})},
                           build, expect=(VECTOR_FILE,), code=("pastkit.skill_vector", "pastkit.checkpoint"))
        if self.vector_norm(stage) == 0:
            self.flag(f"skill vector {stage.path.name} is exactly zero: RL did not change the model, so every "
                       "PaST row equals its baseline")
        return stage

    def derived_vector(self, formula: str, vectors: list[Stage], seed: int = 0, scales: dict | None = None) -> Stage:
        """A vector made from saved skill vectors, as a stage: "random" (the first vector's norm in every tensor,
        random direction: the control for v), "sum" (the vectors added: composition across benchmarks) or
        "groups" (the first vector with a λ per module group, `scales`: attention, mlp, rest)."""
        if formula not in ("random", "sum", "groups"):
            raise ValueError(f"unknown derived vector {formula!r}: 'random', 'sum' or 'groups'")

        def build(tmp: Path):
            vs = [SkillVector.load(v.path / VECTOR_FILE) for v in vectors]
            made = {"random": lambda: vs[0].random_like(seed), "sum": lambda: sum(vs),
                    "groups": lambda: vs[0].scaled_by_group(scales)}[formula]
            with warnings.catch_warnings():  # a zero input vector is flagged where it was made (`vector`)
                warnings.simplefilter("ignore", DegenerateWarning)
                made().save(tmp / VECTOR_FILE)

        key = {"vectors": [v.key for v in vectors], "control_seed": seed, **({"scales": scales} if scales else {})}
        return self.stage(f"{formula}-vector", key, build, expect=(VECTOR_FILE,),
                          code=("pastkit.skill_vector", "pastkit.checkpoint"))

    # -- Algorithm 1 ----------------------------------------------------------------------------------
    def distill(self) -> list[Round]:
        """K rounds over disjoint source domains; round k's RL starts from θ_sft_k + v_{k−1}."""
        rounds, prev = [], None
        for k, domain in enumerate(self.bench.source_rounds(self.p), start=1):
            sft = self.sft(None, self.bench.sft_phases(self, domain, "source"))
            init = sft if prev is None else self.with_vector(sft, prev, 1.0)
            rl = self.grpo(init, self.bench.rl_task(self, domain))
            vector, selection = self.select(rl, sft)
            rounds.append(Round(k, domain, sft, init, rl, vector, selection))
            prev = vector
        return rounds

    def select(self, rl: Stage, sft: Stage) -> tuple[Stage, dict | None]:
        """The skill vector of the RL checkpoint that transfers best to the validation split (paper E.4).

        Each kept checkpoint's vector (and the final policy's) is added to the target SFT of the validation
        documents, and the PaST model is scored on their questions; the best mean score wins (ties: the
        earlier step). Without a validation split or kept checkpoints, the final policy's vector is taken.
        The validation target SFT's own score (no vector) is logged and kept beside them but, as in the paper,
        not a candidate: it says whether the chosen vector helped the validation documents at all."""
        def step(name: str) -> int:  # "step-16" -> 16
            return int(name.split("-")[1])

        steps = sorted(self.summary(rl).get("checkpoints", []), key=step)
        validation = self.bench.validation(self.p)
        if not steps or validation is None:
            return self.vector(rl, sft), None
        val_sft = self.sft(None, self.bench.sft_phases(self, validation, "target"))
        final = f"step-{self.summary(rl)['steps']}"
        candidates = {s: self.vector(rl, sft, s) for s in steps if s != final}
        candidates[final] = self.vector(rl, sft)
        scores = {s: float(self.answers(self.model_of(val_sft, v, self.p.lam), validation, "validation")["score"]
                           .mean()) for s, v in candidates.items()}
        best = max(scores, key=lambda s: (scores[s], -step(s)))
        alone = float(self.answers(self.model_of(val_sft), validation, "validation")["score"].mean())
        self.log(f"[select] validation score per RL checkpoint: "
                 f"{', '.join(f'{s} {x:.3f}' for s, x in scores.items())} -> {best}; "
                 f"without a vector {alone:.3f} ({scores[best] - alone:+.3f})")
        return candidates[best], {"scores": scores, "chosen": best, "validation": validation.name,
                                  "without_vector": alone}

    # -- transfer -------------------------------------------------------------------------------------
    def adapt(self, unit: Domain, strategy: Strategy | str, source: Round | None = None, lam: float | None = None,
              variant: str = "target") -> Model:
        """The target model for `unit` under a transfer strategy, with the skill vector of `source`."""
        s = get_strategy(strategy) if isinstance(strategy, str) else strategy
        lam = self.p.lam if lam is None else lam
        if (s.start != "base" or s.post_hoc) and source is None:
            raise ValueError(f"strategy {s.name!r} needs a source round (its skill vector)")
        start = {"base": None, "base+v": lambda: self.with_vector(None, source.vector, lam),
                 "source_rl": lambda: source.rl}[s.start]
        sft = self.sft(start() if start else None, self.bench.sft_phases(self, unit, variant))
        # post-hoc: θ_T + λ·v composed in memory when loaded (the same add as `inject`), so no 0.5 GB model is
        # written per target, λ and round
        return self.model_of(sft, source.vector, lam) if s.post_hoc else self.model_of(sft)

    def random_control(self, target: Model, source: Round, draw: int = 0) -> Model:
        """θ_T + λ·r for `target` (a unit's Target SFT model), r with the norm of `source`'s v in every tensor and
        a random direction (`draw`): the control that says whether PaST's gain comes from v's direction or would
        come from any vector of its size."""
        return self.model_of(target.stage, self.derived_vector("random", [source.vector], draw), self.p.lam)

    def model_of(self, stage: Stage, vector: Stage | None = None, lam: float = 1.0) -> Model:
        """A stage's model (a dir, or an adapter merged onto its base), plus λ·v in memory if given."""
        path = stage.path / "model"

        def load():
            if not (path / "adapter_config.json").exists():
                model, tok = load_model(path)
            else:
                from peft import PeftModel
                base_dir = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
                model, tok = load_model(base_dir)
                model = PeftModel.from_pretrained(model, path).merge_and_unload().eval()
            if vector is not None:
                add_vector_(model, SkillVector.load(vector.path / VECTOR_FILE), lam)
            return model, tok

        key = {"stage": stage.key, **({"vector": vector.key, "lam": lam} if vector is not None else {})}
        return Model(key, load, stage if vector is None else None)

    # -- evaluation -----------------------------------------------------------------------------------
    def answers(self, model: Model, unit: Domain, split: str = "target") -> pd.DataFrame:
        """Cached per-item scores of `model` on `unit` (the benchmark's scoring), one row per item.

        Scoring runs in fp32 even where training ran in bf16 (`cpu_bf16`): a bf16 matmul rounds every weight of
        θ + λ·v to bf16, and most elements of a 135M model's v are below half a bf16 step of their weight, so
        the model would see v plus rounding noise about five times its norm (README, ToolBench)."""
        def build(tmp: Path):
            # every text field quoted: a model's output may hold a bare "\r", which unquoted splits a CSV row
            self.bench.score(self, model, unit, split).to_csv(tmp / "answers.csv", index=False,
                                                              quoting=csv.QUOTE_NONNUMERIC)

        def check(tmp: Path):
            df = pd.read_csv(tmp / "answers.csv", keep_default_na=False)
            missing = {"item", "document", "score"} - set(df.columns)
            if missing or df.empty or not df["score"].between(0, 1).all():
                raise ValueError(f"answers.csv: needs rows with item, document and scores in [0, 1] ({missing})")

        stage = self.stage("answers", {"model": model.key, "unit": unit.key, "split": split,
                                       "scoring": self.bench.scoring(self), "judge": self.judge.describe()}, build,
                           expect=("answers.csv",), check=check,
                           code=("pastkit.generation", "pastkit.judges", *self.bench.code))
        return pd.read_csv(stage.path / "answers.csv", keep_default_na=False)

    def flag(self, message: str) -> None:
        """Record a degenerate result once (the notebooks print `flags` and write them into provenance)."""
        if message not in self.flags:
            self.flags.append(message)
            self.log(f"[flag]   {message}")


def add_vector_(model, vector: SkillVector, lam: float) -> None:
    """θ += λ·v on a loaded model's parameters (the same fp32 add-and-cast as `inject`)."""
    import torch

    params = dict(model.named_parameters())
    with torch.no_grad():
        for name in vector.keys():
            if name not in params:
                raise ValueError(f"model has no parameter {name!r}, which the skill vector changes")
            merged = add_scaled_(params[name].detach().clone(), vector.get(name), lam)
            if not torch.isfinite(merged).all():
                raise ValueError(f"θ + λ·v is non-finite in {name!r}")
            params[name].copy_(merged)


@dataclass
class Study:
    """Every seed's engine, rounds and flags: what a notebook builds once and reads from."""

    benchmark: object
    params: PastParams
    engines: list[Engine] = field(default_factory=list)
    rounds: dict[int, list[Round]] = field(default_factory=dict)

    @classmethod
    def run(cls, benchmark, params: PastParams, log=say) -> Study:
        """Source distillation (Algorithm 1) for every seed."""
        study = cls(benchmark, params)
        for seed in params.seeds:
            engine = Engine(benchmark, params, seed, log)
            study.engines.append(engine)
            study.rounds[seed] = engine.distill()
        return study

    @property
    def flags(self) -> list[str]:
        return [f for e in self.engines for f in e.flags]

    def orthogonality_pairs(self, target: Stage) -> dict[str, pd.DataFrame]:
        """Cosine tables of the paper's pairs (Fig. 2, Fig. 4) and the referee's transfer check, first seed.

        ΔSFT_k = θ_sft_k − θ_base; ΔRL_k = θ_rl_k − θ_init_k (what RL itself moved); v_K the final skill vector;
        ΔT = θ_T − θ_base for `target`, the benchmark's target SFT stage.
        """
        from .orthogonality import cosine_table
        from .skill_vector import open_delta

        engine = self.engines[0]
        rounds = self.rounds[engine.seed]

        def delta(stage, base):
            return open_delta(stage.path / "model", base=base)

        pairs = {}
        for r in rounds:
            pairs[f"ΔSFT{r.k} vs ΔRL{r.k}"] = cosine_table(delta(r.sft, engine.base),
                                                          delta(r.rl, r.init.path / "model"))
        if len(rounds) >= 2:
            pairs["ΔSFT1 vs ΔSFT2"] = cosine_table(delta(rounds[0].sft, engine.base),
                                                   delta(rounds[1].sft, engine.base))
        v = SkillVector.load(rounds[-1].vector.path / VECTOR_FILE).source
        pairs[f"v{rounds[-1].k} vs ΔT_sft"] = cosine_table(v, delta(target, engine.base))
        return pairs


def rounds_table(study: Study) -> pd.DataFrame:
    """Per seed and round: GRPO reward at the start and end (with intervals), flags, and ‖v‖."""
    rows = []
    for engine in study.engines:
        for r in study.rounds[engine.seed]:
            s = engine.summary(r.rl)
            rw = {k: (round(v, 3) if isinstance(v, float) else [round(x, 3) for x in v])
                  for k, v in s["reward"].items() if k != "n"}
            rows.append({"seed": engine.seed, "round": r.k, "grpo_steps": s["steps"],
                         "reward_start": rw["start"], "reward_start_ci": rw["start_ci"],
                         "reward_end": rw["end"], "reward_end_ci": rw["end_ci"],
                         "reward_never_varied": s["reward_never_varied"],
                         "skill_vector_norm": round(engine.vector_norm(r.vector), 4)})
    return pd.DataFrame(rows)


def reward_report(rounds: pd.DataFrame) -> str:
    """Did RL move the policy? Per seed and round, the reward's start and end with intervals, in words."""
    lines = []
    for r in rounds.itertuples():
        rose = r.reward_end_ci[0] > r.reward_start_ci[1]
        lines.append(f"seed {r.seed}, round {r.round}: mean reward {r.reward_start:.3f} {r.reward_start_ci} over the "
                     f"first quarter of {r.grpo_steps} steps, {r.reward_end:.3f} {r.reward_end_ci} over the last: "
                     + ("it rose (the intervals do not overlap)." if rose else
                        "the intervals overlap, so this run cannot say RL raised the reward; read every PaST row "
                        "below with that in mind."))
    return "\n".join(lines)


def plot_reward_curves(study: Study, caption: str):
    """GRPO's mean reward per step for every seed and round, with a moving average over a quarter of the run."""
    import matplotlib.pyplot as plt
    import numpy as np

    from .training import curve

    fig, ax = plt.subplots(figsize=(7, 3.2))
    lowest = 0.0
    for engine in study.engines:
        for r in study.rounds[engine.seed]:
            history = json.loads((r.rl.path / "model" / "train_log.json").read_text())
            rewards = curve(history, "reward")
            if not rewards:
                continue
            lowest = min(lowest, min(rewards))
            w = max(1, len(rewards) // 4)
            smooth = np.convolve(rewards, np.ones(w) / w, mode="valid")
            line, = ax.plot(range(1, len(rewards) + 1), rewards, lw=0.6, alpha=0.35)
            ax.plot(range(w, len(rewards) + 1), smooth, color=line.get_color(), lw=2,
                    label=f"seed {engine.seed}, round {r.k}")
    ax.set_xlabel("GRPO step")
    ax.set_ylabel("mean reward of the group")
    ax.set_ylim(bottom=lowest)  # from 0 (or the lowest reward, where rewards go below it): no magnified rise
    ax.legend(fontsize=8)
    ax.set_title(f"{study.benchmark.name}: source RL's reward per step (thin) and its moving average over a quarter "
                 "of the run", fontsize=9)
    fig.suptitle(caption, fontsize=8, y=0.0, va="top")
    fig.tight_layout()
    return fig


GATE_DOCUMENTS = 5  # the fewest documents over which RL's gate can pass
GATE_CHANCE = 0.025  # a round's chance to pass with no effect: a 95 % interval's one-sided error


def gate_passes(low: float, documents: int) -> bool:
    """RL's gate passes where the paired difference's interval lies above zero over enough documents."""
    return bool(low > 0) and documents >= GATE_DOCUMENTS


def rl_gate(study: Study) -> pd.DataFrame:
    """RL's own gate, before any PaST number: what θ_rl learned over θ_init (where RL started) on the source
    round's questions RL did not train on (the benchmark's `gate_unit`: never an RL prompt, never a test item),
    closed-book, by the benchmark's judge and its strict metrics. Per seed, round and metric: the paired difference
    in points with its interval over documents, the minimum detectable effect, and whether it passed (the interval
    excludes zero, upwards, over at least `GATE_DOCUMENTS` documents: a percentile bootstrap over two to four
    clusters has a handful of distinct resamples, and its interval is narrower than the truth). A round with one
    document has no interval over documents; a round whose RL trained on every source question (the benchmark's
    `gate_unit` is None) has no gate and a row that says so. A skill vector whose RL did not pass has nothing
    measurable to transfer."""
    from .evaluation import minimum_detectable_effect, paired_difference

    rows = []
    for engine in study.engines:
        for r in study.rounds[engine.seed]:
            unit = engine.bench.gate_unit(engine, r.domain)
            if unit is None:
                rows.append({"seed": engine.seed, "round": r.k, "metric": "none held out", "items": 0,
                             "documents": 0, "passed": False})
                continue
            before = engine.answers(engine.model_of(r.init), unit, "held_out")
            after = engine.answers(engine.model_of(r.rl), unit, "held_out")
            after = after.set_index("item").loc[before["item"]]
            documents = before["document"].nunique()
            for m in [m for m in ("score", "contains", "exact") if m in before]:
                diff = after[m].to_numpy() - before[m].to_numpy()
                d, lo, hi = paired_difference(after[m].to_numpy(), before[m].to_numpy(), before["document"])
                if documents < 2:  # one cluster: the bootstrap's "interval" is the point itself
                    lo = hi = float("nan")
                rows.append({"seed": engine.seed, "round": r.k, "metric": m, "before": 100 * before[m].mean(),
                             "after": 100 * after[m].mean(), "delta": 100 * d, "lo": 100 * lo, "hi": 100 * hi,
                             "mde": 100 * minimum_detectable_effect(diff, before["document"]),
                             "items": len(before), "documents": documents, "passed": gate_passes(lo, documents)})
    return pd.DataFrame(rows).round(2)


def gate_verdict(gate: pd.DataFrame) -> str:
    """The gate in words: which rounds' RL measurably learned on held-out source questions, and what follows.

    A round passes on its first metric (the benchmark's score); another metric above zero is named, not counted,
    since trying several metrics makes one of them pass by chance more often. With several rounds (seeds) one pass
    is weak evidence: with no effect at all each round passes with probability `GATE_CHANCE` (its interval's
    one-sided error), so the gate passes only where as many passes as seen would come by chance in under 5 % of
    studies (`chance_of_passes`), and otherwise says it is inconclusive. The table holds every metric."""
    rounds = gate.groupby(["seed", "round"], sort=False)
    is_first = rounds.cumcount().eq(0)
    first = gate[is_first]
    passed = first[first.passed]
    others = gate[~is_first & gate.passed]
    told = gate[is_first | gate.passed]

    def said(g) -> str:
        if not g.items:
            return f"seed {g.seed} round {g.round}: no gate (RL trained on every source question of the round)"
        few = f"; too few to pass, {GATE_DOCUMENTS} needed" if 1 < g.documents < GATE_DOCUMENTS else ""
        return f"seed {g.seed} round {g.round} {g.metric} {g.delta:+.1f} " + (
            f"[{g.lo:+.1f}, {g.hi:+.1f}] ({_detectable(g.mde)}, {g.documents} documents{few})" if g.documents > 1
            else "(one document: no interval over documents)")

    head = "; ".join(said(g) for g in told.itertuples())
    aside = "" if others.empty else (" Above zero on another metric, not counted: " + ", ".join(
        f"seed {g.seed} round {g.round} ({g.metric})" for g in others.itertuples()) + ".")
    n, k = rounds.ngroups, len(passed)
    able = int((first.documents >= GATE_DOCUMENTS).sum())  # the rounds that could pass at all
    metric = next(iter(first[first["items"] > 0].metric), "score")
    if k == 0:
        where = f"in any of {n} rounds" if n > 1 else "in its one round"
        return (f"RL's gate fails: on source questions RL did not train on, θ_rl is not measurably better than "
                f"θ_init on the {metric} {where} ({head}).{aside} The PaST comparison below therefore cannot show a "
                "transferred skill: whatever it finds, RL learned nothing measurable to transfer.")
    shown = ", ".join(f"seed {g.seed} round {g.round}" for g in passed.itertuples())
    chance = chance_of_passes(k, able)
    odds = (f"with no effect at all, {k} or more of {able} rounds would pass in {100 * chance:.1f} % of studies"
            if able > 1 else f"with no effect at all, it would pass in {100 * chance:.1f} % of studies")
    if able < n:
        odds += f" ({n - able} of the {n} had too few documents to pass)"
    if chance < 0.05:
        return (f"RL's gate passes: on held-out source questions θ_rl beats θ_init on the {metric} with an "
                f"interval above zero in {k} of {n} rounds ({shown}); {odds} ({head}).{aside} Read the answers "
                "before and after RL to see what the skill is.")
    return (f"RL's gate is inconclusive: {k} of {n} rounds pass on the {metric} ({shown}), about what chance alone "
            f"gives: {odds} ({head}).{aside} The PaST comparison below cannot be read as the transfer of a skill "
            "RL learned.")


def chance_of_passes(k: int, n: int, p: float = GATE_CHANCE) -> float:
    """The probability that `k` or more of `n` independent rounds pass the gate when RL learned nothing."""
    return sum(comb(n, i) * p ** i * (1 - p) ** (n - i) for i in range(k, n + 1))


def _detectable(mde: float) -> str:
    return "no spread to estimate a detectable effect from" if pd.isna(mde) else f"detectable ±{mde:.1f}"


def rl_effect(study: Study) -> pd.DataFrame:
    """Did RL move the policy on its source documents? Per seed and round: the benchmark's own scoring of θ_init
    (where RL started) and of θ_rl on every question of the round's source documents, closed-book, with the
    paired difference and its interval over documents. Less noisy than the reward curve, whose quarters hold a
    few sampled groups each. (SQuAD: RL trained on these questions; LooGLE: on model-free questions of the same
    text.)"""
    from .evaluation import bootstrap_interval, paired_difference

    rows = []
    for engine in study.engines:
        for r in study.rounds[engine.seed]:
            before = engine.answers(engine.model_of(r.init), r.domain, "source")
            after = engine.answers(engine.model_of(r.rl), r.domain, "source")
            row = {"seed": engine.seed, "round": r.k, "questions": len(before)}
            for m in [m for m in ("score", "contains") if m in before]:
                d, lo, hi = paired_difference(after[m], before[m], before["document"])
                row.update({f"{m} before %": round(100 * bootstrap_interval(before[m])[0], 1),
                            f"{m} after %": round(100 * after[m].mean(), 1),
                            f"{m} after − before": f"{100 * d:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}]"})
            rows.append(row)
    return pd.DataFrame(rows)
