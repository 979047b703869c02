"""The PaST engine on a toy benchmark and the tiny random model: Algorithm 1's round chaining, every
transfer strategy of Table 4, and which stages a change of λ rebuilds."""

import json
from dataclasses import dataclass

import pandas as pd
import pytest
import torch
from conftest import load_dir

from pastkit import ablations
from pastkit.config import PastParams
from pastkit.judges import make_judge
from pastkit.knowledge import SFTSpec
from pastkit.past import STRATEGIES, Domain, Engine, SFTPhase, Study, get_strategy
from pastkit.skill_rl import RLTask

DOCS = {"source 1": ["The lighthouse on Varn island is painted green.", "Varn island has one harbour."],
        "source 2": ["The Orlo bridge is made of red stone.", "It crosses the river Tesk."],
        "target": ["The comet Hala returns every 41 years.", "Hala was first seen from Pell."]}


@dataclass(frozen=True)
class ToyParams(PastParams):
    model: str = "tiny-random"
    rl_prompts: int = 2
    rl_group: int = 2
    rl_max_new_tokens: int = 6
    rl_lr: float = 1e-2  # large, so that a few GRPO steps visibly move the tiny model


def _variety(prompts, completions, **_):
    """A reward that differs within a group (distinct characters), so GRPO has a gradient."""
    texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
    return [len(set(t)) / 10 for t in texts]


class Toy:
    """A benchmark in a dozen lines: what the engine asks of any benchmark."""

    name, params, code = "toy", ToyParams, (__name__,)

    def judge(self, p):
        return make_judge(p.judge)

    def source_rounds(self, p):
        return [Domain(n, DOCS[n], n) for n in ("source 1", "source 2")][:p.rounds]

    def validation(self, p):
        return None

    def target_units(self, p):
        return [Domain("target", DOCS["target"], "target")]

    def gate_unit(self, engine, domain):
        return None

    def sft_phases(self, engine, domain, variant):
        return [SFTPhase(f"{domain.name}/{variant}", [{"text": d} for d in domain.data],
                         SFTSpec(epochs=1, lr=1e-3, batch=2, grad_accum=1, max_len=64))]

    def rl_task(self, engine, domain):
        return RLTask([f"Tell me about: {d}" for d in domain.data], [_variety], describe={"reward": "variety"})

    def scoring(self, engine):
        return {"toy": 1}

    def score(self, engine, model, unit, split):
        m, _ = model.load()
        w = float(m.model.norm.weight.sum())  # a number that depends on the weights, in [0, 1]
        return pd.DataFrame([{"item": i, "document": i, "score": (abs(w) % 1)} for i in range(2)])


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    return tmp_path / "runs"


def _inputs(stage):
    return json.loads((stage.path / "stage.json").read_text())["inputs"]


def _weights(stage):
    return load_dir(stage.path / "model")


def test_algorithm_1_chains_rounds(runs):
    study = Study.run(Toy(), ToyParams(), log=lambda *_: None)
    r1, r2 = study.rounds[0]
    assert r1.init == r1.sft  # round 1's RL starts from θ_sft_1
    assert _inputs(r2.init) | {"code": None} == {"model": r2.sft.key, "vector": r1.vector.key, "lam": 1.0,
                                                 "seed": 0, "cpu_bf16": False, "code": None}
    assert _inputs(r2.rl)["init"] == r2.init.key  # round 2's RL starts from θ_sft_2 + v_1
    v1 = load_dir(r1.vector.path)
    sft2, init2 = _weights(r2.sft), _weights(r2.init)
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(init2[k], sft2[k] + v1[k], atol=1e-6)
    v2 = load_dir(r2.vector.path)  # v_k = θ_rl_k − θ_sft_k, not θ_rl_k − θ_init_k
    assert torch.allclose(v2[k], _weights(r2.rl)[k] - sft2[k], atol=1e-6)
    assert float(v2[k].abs().sum()) > 0 and not any("zero" in f for f in study.flags)


def test_every_transfer_strategy_starts_and_ends_where_the_paper_says(runs):
    study = Study.run(Toy(), ToyParams(rounds=1), log=lambda *_: None)
    engine, (source,) = study.engines[0], study.rounds[0]
    target = Domain("target", DOCS["target"], "target")
    models = {name: engine.adapt(target, name, source) for name in STRATEGIES}
    sft = models["target_sft"].stage
    assert _inputs(sft)["start"] == engine.base_key  # target SFT alone starts from the base model
    post = models["post_hoc"]  # θ_T + λ·v, composed in memory: nothing written, the same weights as inject's
    assert post.stage is None and post.key == {"stage": sft.key, "vector": source.vector.key, "lam": 1.0}
    v, t = load_dir(source.vector.path), _weights(sft)
    k = "model.layers.1.self_attn.q_proj.weight"
    composed = dict(post.load()[0].state_dict())
    assert torch.allclose(composed[k], t[k] + v[k], atol=1e-6)
    on_disk = _weights(engine.with_vector(sft, source.vector, 1.0))
    assert all(torch.equal(composed[name], on_disk[name]) for name in on_disk)
    pre = models["pre_injection"].stage  # SFT starting from θ_base + λ·v
    start = json.loads((pre.path / "stage.json").read_text())["inputs"]["start"]
    injected = [p for p in runs.glob("inject-*") if _inputs_dir(p).get("model") == engine.base_key]
    assert len(injected) == 1 and start == injected[0].name.rsplit("-", 1)[1]
    seq = models["sequential"].stage  # SFT starting from the source's RL model θ_S^rl
    assert _inputs(seq)["start"] == source.rl.key
    assert len({m.stage.key for m in models.values() if m.stage}) == 3
    with pytest.raises(ValueError, match="unknown transfer strategy"):
        get_strategy("averaging")
    with pytest.raises(ValueError, match="needs a source round"):
        engine.adapt(target, "post_hoc")


def _inputs_dir(path):
    return json.loads((path / "stage.json").read_text())["inputs"]


def test_a_change_of_lambda_rebuilds_only_what_depends_on_it(runs):
    target = Domain("target", DOCS["target"], "target")

    def everything(lam):
        study = Study.run(Toy(), ToyParams(rounds=1, lam=lam), log=lambda *_: None)
        engine, source = study.engines[0], study.rounds[0][0]
        for name in ("post_hoc", "pre_injection"):
            engine.answers(engine.adapt(target, name, source), target)

    everything(1.0)
    before = {p.name for p in runs.iterdir() if not p.name.startswith(".")}
    everything(1.0)
    assert {p.name for p in runs.iterdir() if not p.name.startswith(".")} == before  # a re-run builds nothing
    everything(0.5)
    added = sorted(p.name.rsplit("-", 1)[0] for p in runs.iterdir() if p.name not in before
                   and not p.name.startswith("."))
    # post-hoc: the answers of θ_T + 0.5·v (composed in memory); pre-injection: a new θ_base + 0.5·v, its SFT,
    # its answers
    assert added == ["answers", "answers", "inject", "sft-full"]


def test_a_degenerate_run_is_flagged(runs):
    def flat(prompts, completions, **_):
        return [0.0] * len(completions)

    class Flat(Toy):
        def rl_task(self, engine, domain):
            return RLTask([f"About: {d}" for d in domain.data], [flat], describe={"reward": "flat"})

    study = Study.run(Flat(), ToyParams(rounds=1, rl_beta=0.0), log=lambda *_: None)
    assert any("never varied" in f for f in study.flags) and any("exactly zero" in f for f in study.flags)


def test_composition_scores_two_benchmarks_vectors_alone_and_added(runs):
    class Other(Toy):
        name = "other"

        def source_rounds(self, p):
            return [Domain("source 2", DOCS["source 2"], "source 2")]

    a = Study.run(Toy(), ToyParams(rounds=1), log=lambda *_: None)
    b = Study.run(Other(), ToyParams(rounds=1), log=lambda *_: None)
    target = Domain("target", DOCS["target"], "target")
    (va,), (vb,) = a.rounds[0], b.rounds[0]
    answers = ablations.composition({"A": (a.engines[0], target, va), "B": (b.engines[0], target, vb)})
    assert list(answers.groupby(["benchmark", "method"], sort=False).size().index) == [
        ("A", "Target SFT"), ("A", "+ λ·v_A (PaST)"), ("A", "+ λ·v_B"), ("A", "+ λ·(v_A + v_B)"),
        ("B", "Target SFT"), ("B", "+ λ·v_B (PaST)"), ("B", "+ λ·v_A"), ("B", "+ λ·(v_B + v_A)")]
    [summed] = runs.glob("sum-vector-*")  # one vector serves both sides
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(load_dir(summed)[k], load_dir(va.vector.path)[k] + load_dir(vb.vector.path)[k], atol=1e-6)
    t = ablations.composition_table(answers)
    assert (t[t.method.str.endswith("(PaST)")].score_vs_own == 0).all()


def test_controls_run_on_every_seed_with_its_own_target_and_vector(runs):
    study = Study.run(Toy(), ToyParams(rounds=1, seeds=[0, 1]), log=lambda *_: None)
    target = Domain("target", DOCS["target"], "target")
    answers = ablations.controls(study, target, random_seeds=(0,))
    methods = ["Target SFT", "+ λ·v (PaST)", "− λ·v", "+ λ·random, same norm per tensor (draw 0)"]
    assert list(answers.groupby(["seed", "method"], sort=False).size().index) == [(s, m) for s in (0, 1)
                                                                                   for m in methods]
    scored = [_inputs_dir(p)["model"] for p in runs.glob("answers-*")]
    for engine in study.engines:  # −v: this seed's target SFT minus this seed's vector, never another seed's
        sft = engine.adapt(target, "target_sft").stage
        assert {"stage": sft.key, "vector": study.rounds[engine.seed][0].vector.key, "lam": -1.0} in scored
    assert study.rounds[0][0].vector.key != study.rounds[1][0].vector.key
    t = ablations.table(answers)
    assert (t.seeds == 2).all()
    md = ablations.markdown(t, "toy", "caption")
    assert "over seeds [95% CI]" in md and "per seed" in md
    legend = ablations.plot(t, "controls", "caption").axes[0].get_legend()  # the seeds' interval is drawn too
    assert [x.get_text() for x in legend.get_texts()] == ["95% CI over documents", "95% CI over 2 seeds"]
    claims = ablations.control_claims(t, "Toy")
    assert len(claims) == 3 and all("over 2 seeds" in c and "over seeds" in c for c in claims)


def test_over_seeds_reads_back_the_seeds_a_study_shares_and_trains_the_others(runs):
    """The controls' seeds: a seed the notebook's study trained is read from its stages, not trained again."""
    study = Study.run(Toy(), ToyParams(rounds=1, seeds=[0]), log=lambda *_: None)
    assert ablations.over_seeds(study, [0]) is study
    built = {p.name for p in runs.iterdir()}
    wider = ablations.over_seeds(study, [0, 1])
    assert wider.params.seeds == [0, 1] and [e.seed for e in wider.engines] == [0, 1]
    assert wider.rounds[0][0].vector.key == study.rounds[0][0].vector.key  # seed 0 read back
    assert wider.rounds[1][0].vector.key != study.rounds[0][0].vector.key  # seed 1 its own
    new = {p.name for p in runs.iterdir()} - built
    assert any(n.startswith("skill-vector-") for n in new)  # seed 1's rounds, trained here
    with pytest.raises(ValueError, match="control_seeds"):
        ablations.SquadAblationParams(control_seeds=[1, 1])


def test_sft_steps_count_every_phase_of_a_chain(runs):
    """A two-phase SFT (LooGLE's curriculum) is counted as both phases' steps, down to the base model."""
    from pastkit.past import Engine

    engine = Engine(Toy(), ToyParams(), 0, log=lambda *_: None)
    spec = SFTSpec(epochs=1, lr=1e-3, batch=2, grad_accum=1, max_len=64)
    phases = [SFTPhase("toy/phase1", [{"text": d} for d in DOCS["source 1"]], spec),
              SFTPhase("toy/phase2", [{"text": d} for d in DOCS["target"] * 2], spec)]
    first = engine.sft(None, phases[:1])
    both = engine.sft(None, phases)
    assert engine.sft_steps(first) == engine.summary(first)["steps"] > 0
    assert engine.sft_steps(both) == engine.summary(first)["steps"] + engine.summary(both)["steps"]
    assert engine.summary(both)["steps"] > 0


def test_answers_survive_any_characters_a_model_writes(runs):
    """A tiny random model writes control characters; a bare carriage return once split an answers.csv row."""
    from pastkit.past import Engine

    odd = ["a\rb", "c\nd, \"e\"", "\x0b\x1a\x00", ""]

    class Odd(Toy):
        def score(self, engine, model, unit, split):
            return pd.DataFrame([{"item": f"0:{i}", "document": 0, "prediction": t, "score": 0.5}
                                 for i, t in enumerate(odd)])

    engine = Engine(Odd(), ToyParams(), 0, log=lambda *_: None)
    unit = Domain("target", DOCS["target"], "target")
    df = engine.answers(engine.base_model(), unit)
    assert df["prediction"].tolist() == odd and df["score"].tolist() == [0.5] * 4


def test_precision_is_part_of_every_stage_key(runs):
    """A bf16 run never reads back an fp32 run's stage: the precision is in every key, and trainers get it."""
    fp32 = Study.run(Toy(), ToyParams(rounds=1), log=lambda *_: None).rounds[0][0]
    bf16 = Study.run(Toy(), ToyParams(rounds=1, cpu_bf16=True), log=lambda *_: None).rounds[0][0]
    for a, b in ((fp32.sft, bf16.sft), (fp32.rl, bf16.rl), (fp32.vector, bf16.vector)):
        assert a.key != b.key and _inputs(a)["cpu_bf16"] is False and _inputs(b)["cpu_bf16"] is True
    assert _inputs(bf16.sft)["spec"]["cpu_bf16"] is True and _inputs(bf16.rl)["spec"]["cpu_bf16"] is True
    assert json.loads((bf16.rl.path / "model" / "summary.json").read_text())["spec"]["cpu_bf16"] is True


@pytest.mark.parametrize("cpu_bf16", [False, True])
def test_grpo_rollouts_go_through_the_kits_decoder(cpu_bf16, tiny_model, tmp_path, monkeypatch):
    """trl's rollouts decode through `decoding.Decoder` (its products in bf16 when cpu_bf16), never HF `generate`
    for the options the kit uses; the policy is saved in fp32 either way."""
    from transformers import GenerationMixin

    from pastkit.decoding import Decoder
    from pastkit.skill_rl import GRPOSpec, train_grpo

    seen, decode = [], Decoder.generate
    monkeypatch.setattr(GenerationMixin, "generate", lambda *a, **kw: pytest.fail("HF generate was called"))
    def recording(self, *a, **kw):
        seen.append((self.compute, kw["do_sample"], kw["top_k"]))
        return decode(self, *a, **kw)

    monkeypatch.setattr(Decoder, "generate", recording)
    task = RLTask([f"Tell me about: {d}" for d in DOCS["source 1"]], [_variety])
    spec = GRPOSpec(epochs=1, lr=1e-2, group=2, prompts_per_step=1, beta=0.0, temperature=1.0, top_p=1.0, top_k=0,
                    max_new_tokens=4, cpu_bf16=cpu_bf16)
    summary = train_grpo(tiny_model, task, tmp_path / "rl", spec, seed=0, log=lambda *_: None)
    want = torch.bfloat16 if cpu_bf16 else torch.float32
    assert summary["steps"] == 2 and seen and set(seen) == {(want, True, 0)}
    assert {t.dtype for t in load_dir(tmp_path / "rl").values()} == {torch.float32}


def test_what_table3s_wide_round_flags_reaches_the_study(monkeypatch):
    """Table 3's 1-round-on-2N run is an engine of its own; a zero vector it meets must reach the notebook's flags
    (and the table's provenance), not stay in that engine."""
    from types import SimpleNamespace as NS

    from pastkit.benchmarks.squad import SquadParams

    class WideEngine:  # stands in for the 1×2N run: it only distills, and flags its vector
        def __init__(self, bench, params, seed, log):
            assert params.rounds == 1 and params.n_source == 2 * study.params.n_source
            self.flags = ["skill vector v-wide is exactly zero"]

        def distill(self):
            return [NS(domain=NS(data={"passages": [1, 2]}), sft="sft", rl="rl")]

    flags = []
    engine = NS(seed=0, log=print, flags=flags, flag=flags.append, sft_steps=lambda sft: 1,
                answers=lambda model, unit: pd.DataFrame({"score": [0.5]}),
                adapt=lambda unit, strategy, source=None: strategy, summary=lambda rl: {"steps": 1})
    source = NS(domain=NS(data={"passages": [1]}), sft="sft", rl="rl")
    study = NS(params=SquadParams(), benchmark=NS(name="squad"), engines=[engine], rounds={0: [source, source]})
    monkeypatch.setattr(ablations, "Engine", WideEngine)
    answers, steps = ablations.iterative_refinement(study, unit="target")
    assert engine.flags == ["1 round on 12: skill vector v-wide is exactly zero"]
    assert list(steps["source documents"]) == [1, 2, 2] and len(answers) == 4


def test_every_benchmark_keeps_the_engine_contract(runs):
    """A benchmark that misspells a method (ToolBench once had `validation_unit`, so checkpoint selection never
    ran for it) or orders its parameters otherwise is refused when its engine is made, naming what is wrong."""
    from pastkit.benchmarks import Loogle, Squad, Toolbench
    from pastkit.past import Benchmark, check_benchmark

    for bench in (Squad(), Loogle(), Toolbench(), Toy()):
        assert isinstance(bench, Benchmark)
        check_benchmark(bench)

    Misspelt = type("Misspelt", (), {**{k: v for k, v in vars(Toy).items() if k != "validation"},
                                     "validation_unit": Toy.validation})
    with pytest.raises(TypeError, match="Misspelt is not a pastkit benchmark: no validation"):
        Engine(Misspelt(), ToyParams(), 0, log=lambda *_: None)

    class Swapped(Toy):
        def score(self, engine, unit, model, split):
            return super().score(engine, model, unit, split)

    with pytest.raises(TypeError, match=r"score\(engine, unit, model, split\) where the contract says "
                                        r"score\(engine, model, unit, split\)"):
        check_benchmark(Swapped())


def test_lora_grpo_saves_a_merged_policy_whose_skill_vector_is_the_adapters_exact_delta(tiny_model, tmp_path):
    """With lora_r, GRPO trains adapters and merges them: v = θ_rl − θ_init is the adapters' ΔW = (α/r)·B·A on every
    adapted layer and exactly zero elsewhere, and the engine reads the merged policy like any other."""
    from safetensors.torch import load_file

    from pastkit import SkillVector
    from pastkit.skill_rl import GRPOSpec, train_grpo

    task = RLTask([f"Tell me about: {d}" for d in DOCS["source 1"]], [_variety])
    spec = GRPOSpec(epochs=1, lr=5e-2, group=2, prompts_per_step=1, beta=0.0, temperature=1.0, top_p=1.0, top_k=0,
                    max_new_tokens=4, lora_r=4)
    train_grpo(tiny_model, task, tmp_path / "rl", spec, seed=0, log=lambda *_: None)
    v = SkillVector.extract(tmp_path / "rl", tiny_model)
    adapter = load_file(tmp_path / "rl" / "adapter" / "adapter_model.safetensors")
    scale = 2 * 4 / 4  # alpha / r
    checked = 0
    for name in v.keys():
        delta = v.get(name)
        a_key = next((k for k in adapter if k.endswith(name.replace(".weight", ".lora_A.weight"))), None)
        if a_key is None:
            assert not delta.any(), f"{name} changed though no adapter touches it"
            continue
        b = adapter[a_key.replace("lora_A", "lora_B")]
        assert torch.allclose(delta, scale * b @ adapter[a_key], atol=1e-6), name
        checked += 1
    assert checked == 2 * 7 and v.norm() > 0  # every linear layer of both blocks, and RL moved them
