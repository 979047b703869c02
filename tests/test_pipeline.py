"""Stages cache and resume; parameters are typed; the notebooks run under papermill and write their files."""

import ast
import json

import nbformat
import pandas as pd
import pytest
import yaml

from pastkit.ablations import SquadAblationParams
from pastkit.benchmarks.loogle import LoogleParams
from pastkit.benchmarks.squad import SquadParams, cpt_documents, load_passages, single_documents, source_rounds
from pastkit.benchmarks.toolbench import ToolbenchParams
from pastkit.config import load_profile
from pastkit.evaluation import bootstrap_interval, paired_difference, summarize
from pastkit.past import RANDOM_CONTROL
from pastkit.places import ROOT, results_folder
from pastkit.stages import run_stage


def test_stage_is_cached_and_an_interrupted_stage_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    calls = []

    def build(out):
        calls.append(1)
        (out / "x.txt").write_text("done")

    a = run_stage("demo", {"p": 1}, build, log=lambda *_: None)
    b = run_stage("demo", {"p": 1}, build, log=lambda *_: None)
    assert a == b and len(calls) == 1 and (a.path / "x.txt").read_text() == "done"
    assert run_stage("demo", {"p": 2}, build, log=lambda *_: None).key != a.key and len(calls) == 2

    def crash(out):
        (out / "partial").write_text("half")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_stage("demo", {"p": 3}, crash, log=lambda *_: None)
    names = sorted(p.name for p in tmp_path.iterdir() if p.name != ".locks")
    assert f"demo-{_key(3)}" not in names and not any(n.startswith(".") for n in names)  # no stage, no temp dir
    run_stage("demo", {"p": 3}, build, log=lambda *_: None)  # resumes: builds it now
    assert len(calls) == 3


def _key(p):
    from pastkit.stages import stage_key
    return stage_key("demo", {"p": p})


def test_params_are_typed_and_validated():
    with pytest.raises(TypeError, match="rounds='2'"):
        SquadParams(rounds="2")
    with pytest.raises(TypeError, match="use_vllm"):
        SquadParams(use_vllm=1)
    with pytest.raises(ValueError, match="judge"):
        SquadParams(judge="gpt")
    with pytest.raises(ValueError, match="regimes"):
        SquadParams(regimes=["both"])
    with pytest.raises(ValueError, match="rl_schedule"):
        SquadParams(rl_schedule="warm")
    assert SquadParams(lam=2).lam == 2.0  # an int where a float is expected is fine


def test_profiles_and_notebook_parameter_cells_agree():
    """The parameters cells are written from the parameters classes (typed, so papermill can describe them) and
    hold the defaults (the cpu profile); no later cell rebinds a parameter's name; profiles hold only what differs
    from the defaults."""
    from pastkit.config import parameters_cell
    from pastkit.driver import NOTEBOOKS

    classes = NOTEBOOKS
    for name, cls in classes.items():
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1 and nb.cells.index(cells[0]) == 2  # right after the title and imports
        assert cells[0].source == parameters_cell(cls), f"{name}: run `python -m pastkit.driver --write-parameters`"
        values = {n.target.id: ast.literal_eval(n.value) for n in ast.parse(cells[0].source).body}
        assert values == cls().as_dict(), name
        later = [node for c in nb.cells[3:] if c.cell_type == "code" for node in ast.walk(ast.parse(c.source))]
        bound = {t.id for node in later if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign, ast.For))
                 for target in (node.targets if isinstance(node, ast.Assign) else [node.target])
                 for t in ast.walk(target) if isinstance(t, ast.Name)}
        assert not bound & cls.names(), f"{name} rebinds parameter names {sorted(bound & cls.names())}"
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
        assert nb.metadata["kernelspec"]["language"] == "python"
    for profile in ("smoke", "cpu", "paper"):
        values = load_profile(profile)
        assert set(values) <= set().union(*(c.names() for c in classes.values()))
        assert values["profile"] == profile
        for k, v in values.items():  # a key must change something for at least one notebook that declares it
            if k != "profile":
                assert any(v != c().as_dict()[k] for c in classes.values() if k in c.names()), f"{profile}: {k}"
        for cls in set(classes.values()):
            cls.from_profile(values)


def test_only_the_reference_run_writes_figures(monkeypatch):
    from pastkit.driver import run_profile

    monkeypatch.delenv("PASTKIT_RESULTS", raising=False)
    a, b = SquadParams(), SquadParams(lam=0.5)
    assert results_folder(a).parent == ROOT / "results" and results_folder(a) != results_folder(b)
    assert results_folder(SquadParams(profile="smoke")).name.startswith("smoke-")
    with pytest.raises(ValueError, match="from the 'cpu' profile only"):
        run_profile("smoke", reference=True)


def test_seal_documents_and_splits():
    r1, r2 = source_rounds(50, 2)
    assert [p["context"] for p in r1] == [p["context"] for p in load_passages("train_round1_50")]
    assert not {p["context"] for p in r1} & {p["context"] for p in r2}
    p = r1[0]
    docs = single_documents(p, ["line one\n\nline two", "line three"])
    assert docs == [f"{p['title']}\nline one", f"{p['title']}\nline two", f"{p['title']}\nline three",
                    f"{p['title']}\n{p['context']}"]
    assert cpt_documents([p], [["gen a", "gen b"]]) == [f"{p['title']}\n{p['context']}", f"{p['title']}\ngen a",
                                                       f"{p['title']}\ngen b"]
    with pytest.raises(ValueError, match="exceeds"):
        source_rounds(60, 2)


def test_user_passages_are_validated(tmp_path):
    bad = tmp_path / "mine.json"
    bad.write_text(json.dumps([{"title": "t", "context": "c", "questions": [{"question": "q"}]}]))
    with pytest.raises(ValueError, match="without 'question'/'answer'"):
        load_passages(bad)
    with pytest.raises(FileNotFoundError, match="shipped splits"):
        load_passages("nope")


def test_intervals():
    mean, lo, hi = bootstrap_interval([1, 0] * 50)
    assert mean == 0.5 and 0.38 < lo < 0.45 and 0.55 < hi < 0.62
    d, dlo, dhi = paired_difference([1] * 30 + [0] * 10, [0] * 30 + [0] * 10)
    assert d == 0.75 and dlo > 0.5
    # over seeds: each seed's difference of means, then a t-interval (t 4.303 with 2 degrees of freedom)
    rows = [{"method": m, "seed": seed, "item": i, "document": i // 2, "score": x}
            for seed, (base, new) in enumerate([(0.2, 0.5), (0.3, 0.2), (0.1, 0.3)])
            for m, x in (("A", base), ("B", new)) for i in range(4)]
    b = summarize(pd.DataFrame(rows), baseline="A").set_index("method").loc["B"]
    diffs = pd.Series([30.0, -10.0, 20.0])
    half = 4.303 * diffs.std() / 3 ** 0.5
    assert b.score_vs_baseline == pytest.approx(diffs.mean(), abs=0.01)
    assert (b.score_vs_baseline_seed_ci_low, b.score_vs_baseline_seed_ci_high) == pytest.approx(
        (diffs.mean() - half, diffs.mean() + half), abs=0.01)


def test_notebooks_run_under_papermill_with_the_smoke_profile(tmp_path, monkeypatch):
    """The README's driver, the smoke profile, a fresh runs folder: every file the notebooks must write."""
    from pastkit.driver import run_profile

    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PASTKIT_RESULTS", str(tmp_path / "results"))
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    executed = run_profile("smoke", out_dir=tmp_path / "executed", log=lambda *_: None)
    smoke = load_profile("smoke")
    figs = tmp_path / "results" / f"smoke-{SquadParams.from_profile(smoke).digest()}"
    loogle = tmp_path / "results" / f"smoke-{LoogleParams.from_profile(smoke).digest()}"
    ablations = tmp_path / "results" / f"smoke-{SquadAblationParams.from_profile(smoke).digest()}"
    tools = tmp_path / "results" / f"smoke-{ToolbenchParams.from_profile(smoke).digest()}"
    assert sorted((tmp_path / "results").iterdir()) == sorted([figs, loogle, ablations, tools])
    for name in ("fig3_toolbench.csv", "fig3_toolbench.md", "fig3_toolbench.png", "grpo_reward_toolbench.png",
                 "toolbench_parameter_recall.csv", "toolbench_skill_vs_target.png",
                 "orthogonality_toolbench_summary.csv"):
        assert (tools / name).stat().st_size > 0, name
    f3 = pd.read_csv(tools / "fig3_toolbench.csv")
    assert list(f3.category) == ["Text_Analysis", "Average (over categories)"]
    assert all(f3[c].between(0, 100).all() for c in ("Target SFT %", "PaST %", "random %"))
    by_seed = pd.read_csv(tools / "fig3_toolbench_seeds.csv")  # Fig. 3 seed by seed: every method, every category
    assert sorted(by_seed.method) == sorted(["Target SFT", "PaST", RANDOM_CONTROL]) and (by_seed.seeds == 1).all()
    assert by_seed.score_per_seed.str.startswith("0: ").all()
    prov = json.loads((tools / "fig3_toolbench.csv.provenance.json").read_text())
    assert prov["judge"]["solution_judge"] == "grounded" and prov["categories"] == ["Text_Analysis"]
    assert list(pd.read_csv(tools / "orthogonality_toolbench_summary.csv").pair) == ["ΔSFT1 vs ΔRL1", "v1 vs ΔT_sft"]
    for name in ("table3_iterative.csv", "table3_iterative.md", "table3_iterative.png", "table4_transfer.csv",
                 "table4_transfer.md", "table4_transfer.png", "controls_squad.csv",
                 "controls_squad.png", "lambda_validation_squad.csv", "lambda_test_squad.csv"):
        assert (ablations / name).stat().st_size > 0, name
    t3 = pd.read_csv(ablations / "table3_iterative.csv")
    assert list(t3.method) == ["Target SFT", "1 round (N = 2)", "1 round (N = 4)", "2 rounds (N = 2)"]
    steps = {r["variant"]: r for r in json.loads((ablations / "table3_iterative.csv.provenance.json").read_text())
             ["steps"]}
    assert steps["1 round (N = 4)"]["GRPO steps"] == steps["2 rounds (N = 2)"]["GRPO steps"]  # equal RL steps
    assert steps["1 round (N = 4)"]["source documents"] == steps["2 rounds (N = 2)"]["source documents"] == 4
    t4 = pd.read_csv(ablations / "table4_transfer.csv")
    assert list(t4.method) == ["Target SFT", "Post-hoc composition (PaST)", "Pre-injection", "Sequential fine-tuning"]
    groups = pd.read_csv(ablations / "lambda_groups_validation_squad.csv")
    assert set(groups.group) == {"attention", "mlp", "rest"} and groups.chosen.any()
    assert len(pd.read_csv(ablations / "lambda_groups_test_squad.csv")) == 3
    for name in ("table3_iterative_loogle.csv", "table4_transfer_loogle.md", "table4_transfer_loogle.png",
                 "controls_loogle.csv", "controls_loogle.png"):
        assert (ablations / name).stat().st_size > 0, name
    assert list(pd.read_csv(ablations / "table3_iterative_loogle.csv").method) == [
        "Target SFT", "1 round (N = 1)", "1 round (N = 2)", "2 rounds (N = 1)"]
    for name in ("controls_squad.csv", "controls_loogle.csv"):  # over the smoke profile's control_seeds
        assert (pd.read_csv(ablations / name).seeds == 2).all(), name
    assert "seeds 0, 1" in (ablations / "controls_loogle.md").read_text()
    assert list(pd.read_csv(ablations / "controls_loogle.csv").method) == [
        "Target SFT", "+ λ·v (PaST)", "− λ·v", "+ λ·random, same norm per tensor (draw 0)",
        "+ λ·random, same norm per tensor (draw 1)"]
    comp = pd.read_csv(ablations / "composition.csv")  # SQuAD + LooGLE vectors, on each benchmark
    assert list(comp.benchmark) == ["SQuAD"] * 4 + ["LooGLE"] * 4
    assert list(comp.method[:4]) == ["Target SFT", "+ λ·v_SQuAD (PaST)", "+ λ·v_LooGLE", "+ λ·(v_SQuAD + v_LooGLE)"]
    assert (comp[comp.method.str.contains("PaST")].score_vs_own == 0).all() and (ablations / "composition.png").exists()
    prov = json.loads((ablations / "composition.csv.provenance.json").read_text())
    assert prov["loogle_params"] == LoogleParams.from_profile(smoke).as_dict()  # 03's study: its stages, reused
    lam = pd.read_csv(ablations / "lambda_validation_squad.csv")
    assert list(lam.lam) == [0.0, 0.5, 1.0, 1.5, 2.0] and lam.chosen.sum() == 1
    for name in ("table2_loogle.csv", "table2_loogle.md", "table2_loogle.png", "fig2_loogle_sft_rl.png",
                 "fig4_loogle_sft_sft.png", "loogle_skill_vs_target.png", "orthogonality_loogle_summary.csv"):
        assert (loogle / name).stat().st_size > 0, name
    t2 = pd.read_csv(loogle / "table2_loogle.csv")
    assert list(t2.method) == ["Base", "Target SFT", "PaST (1 round)", "PaST (2 rounds)", RANDOM_CONTROL]
    assert t2.paper_reported.isna().all()  # the shipped sample is not the paper's split: no paper numbers beside
    prov = json.loads((loogle / "table2_loogle.csv.provenance.json").read_text())
    assert prov["split"] == {"source": [[4], [3]], "validation": [2], "test": [0, 1]}
    assert {r["round"] for r in prov["selection"] if r["chosen"]} == {1, 2}  # a checkpoint was chosen per round
    assert "without a vector" in (tmp_path / "executed" / "03_loogle.ipynb").read_text()  # the no-vector reference
    for name in ("fig2_orthogonality_sft_rl.png", "fig4_orthogonality_sft_sft.png",
                 "orthogonality_skill_vs_target.png", "orthogonality_summary.csv", "table1_squad.csv",
                 "table1_squad.md", "table1_squad.png"):
        assert (figs / name).stat().st_size > 0, name
        assert json.loads((figs / f"{name}.provenance.json").read_text())["profile"] == "smoke"
    prov = json.loads((figs / "table1_squad.csv.provenance.json").read_text())
    assert prov["model"] == "tiny-random" and prov["params"]["rounds"] == 2 and prov["lam"] == 1.0
    assert any("exactly zero" in f for f in prov["flags"])  # the tiny model's rewards are all 0: said, not hidden
    assert "tiny-random · λ = 1 · 2 rounds · seed 0 · judge token_f1" in (figs / "table1_squad.md").read_text()
    table = pd.read_csv(figs / "table1_squad.csv")
    assert set(table.regime) == {"cpt", "single"}
    assert list(table[table.regime == "cpt"].method) == ["Base", "Train on Passage", "Train on Passage + Synthetic",
                                                        "PaST (1 round)", "PaST (2 rounds)", RANDOM_CONTROL]
    assert table.score.between(0, 100).all() and (table.judge == "token_f1").all()
    assert {"score_vs_baseline", "score_vs_baseline_ci_low", "n_documents", "paper_reported"} <= set(table.columns)
    summary = pd.read_csv(figs / "orthogonality_summary.csv")
    assert list(summary.pair) == ["ΔSFT1 vs ΔRL1", "ΔSFT2 vs ΔRL2", "ΔSFT1 vs ΔSFT2", "v2 vs ΔT_sft"]
    for out in executed:
        nb = nbformat.read(out, as_version=4)
        assert any(c.metadata.get("tags") == ["injected-parameters"] for c in nb.cells)
        outputs = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", [])]
        noise = [o.text for o in outputs if o.output_type == "stream" and (o.name == "stderr" or "it/s]" in o.text)]
        assert not noise, noise[:2]  # no progress-bar fragments or library warnings in an executed notebook
        assert "Conclusion" in nb.cells[-2].source and nb.cells[-1].outputs[0].text.strip()
    stages = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert {"implications", "sft-full", "sft-lora", "grpo", "skill-vector", "inject", "answers"} <= set(stages)
    assert sorted(p.name for p in figs.glob("cosine_squad_*.csv")) == [
        "cosine_squad_dsft1_vs_drl1.csv", "cosine_squad_dsft1_vs_dsft2.csv", "cosine_squad_dsft2_vs_drl2.csv",
        "cosine_squad_v2_vs_dt_sft.csv"]
    assert "RL's gate" in (figs / "conclusion_squad.md").read_text()
    assert (tools / "rl_gate_toolbench.csv").exists() and (tools / "conclusion_toolbench.md").exists()

    # explore mode: 01 draws the saved per-tensor tables again, training and writing nothing
    written = {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*")}
    cached = {p.name for p in (tmp_path / "runs").iterdir()}
    run_profile("smoke", out_dir=tmp_path / "explored", only=["01_orthogonality"], log=lambda *_: None,
                overrides={"explore": True, "explore_from": str(figs)})
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "results").rglob("*")} == written
    assert {p.name for p in (tmp_path / "runs").iterdir()} == cached
    explored = (tmp_path / "explored" / "01_orthogonality.ipynb").read_text()
    assert "explore: 4 per-tensor tables" in explored and "image/png" in explored

    # a re-run with the same profile builds nothing new; one changed parameter (lam) rebuilds only its dependants,
    # and writes to a results folder of its own
    before = {p.name for p in (tmp_path / "runs").iterdir()}
    run_profile("smoke", out_dir=tmp_path / "executed", only=["02_squad"], log=lambda *_: None)
    assert {p.name for p in (tmp_path / "runs").iterdir()} == before
    changed = tmp_path / "lam.yaml"
    changed.write_text(yaml.safe_dump({**load_profile("smoke"), "lam": 0.5}))
    run_profile(str(changed), out_dir=tmp_path / "executed", only=["02_squad"], log=lambda *_: None)
    added = [p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir() if p.name not in before]
    assert set(added) == {"answers"}  # PaST's θ_T + λ·v is composed in memory, never written
    assert len(list((tmp_path / "results").iterdir())) == 5
