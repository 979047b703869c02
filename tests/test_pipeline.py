"""Stages cache and resume; parameters are typed; the notebooks run under papermill and write their files."""

import ast
import json

import nbformat
import pandas as pd
import pytest
import yaml

from pastkit.config import SquadParams, load_profile
from pastkit.evaluation import bootstrap_interval, paired_difference
from pastkit.report import ROOT
from pastkit.squad import cpt_documents, load_passages, single_documents, source_rounds
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
    assert SquadParams(lam=2).lam == 2.0  # an int where a float is expected is fine


def test_profiles_and_notebook_parameter_cells_agree():
    """The parameters cells hold the cpu profile's values; every profile key is a real parameter."""
    for name in ("01_orthogonality", "02_squad"):
        nb = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        cells = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        assert len(cells) == 1 and nb.cells.index(cells[0]) == 2  # right after the title and imports
        values = {n.targets[0].id: ast.literal_eval(n.value) for n in ast.parse(cells[0].source).body}
        assert values == SquadParams().as_dict()
        assert all(not c.get("outputs") for c in nb.cells if c.cell_type == "code"), "commit notebooks without outputs"
        assert nb.metadata["kernelspec"]["language"] == "python"
    for profile in ("smoke", "cpu", "paper"):
        values = load_profile(profile)
        assert set(values) <= SquadParams.names()
        SquadParams(**values)
    assert load_profile("cpu") == SquadParams().as_dict()


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


def test_notebooks_run_under_papermill_with_the_smoke_profile(tmp_path, monkeypatch):
    """The README's driver, the smoke profile, a fresh runs folder: every file the notebooks must write."""
    from pastkit.driver import run_profile

    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PASTKIT_FIGURES", str(tmp_path / "figures"))
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    executed = run_profile("smoke", out_dir=tmp_path / "executed")
    figs = tmp_path / "figures" / "smoke"
    for name in ("fig2_orthogonality_sft_rl.png", "fig4_orthogonality_sft_sft.png",
                 "orthogonality_skill_vs_target.png", "orthogonality_summary.csv", "table1_squad.csv",
                 "table1_squad.md", "table1_squad.png"):
        assert (figs / name).stat().st_size > 0, name
    prov = json.loads((figs / "table1_squad.csv.provenance.json").read_text())
    assert prov["profile"] == "smoke" and prov["model"] == "tiny-random" and prov["params"]["rounds"] == 2
    table = pd.read_csv(figs / "table1_squad.csv")
    assert set(table.regime) == {"cpt", "single"}
    assert list(table[table.regime == "cpt"].method) == ["Base", "Train on Passage", "Train on Passage + Synthetic",
                                                        "PaST (1 round)", "PaST (2 rounds)"]
    assert table.score.between(0, 100).all() and (table.judge == "token_f1").all()
    summary = pd.read_csv(figs / "orthogonality_summary.csv")
    assert list(summary.pair) == ["ΔSFT1 vs ΔRL1", "ΔSFT2 vs ΔRL2", "ΔSFT1 vs ΔSFT2", "v2 vs ΔT_sft"]
    for out in executed:
        nb = nbformat.read(out, as_version=4)
        assert any(c.metadata.get("tags") == ["injected-parameters"] for c in nb.cells)
    stages = sorted(p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir() if p.is_dir())
    assert {"implications", "sft-full", "sft-lora", "grpo", "skill-vector", "inject", "answers"} <= set(stages)

    # a re-run with the same profile builds nothing new; one changed parameter (lam) rebuilds only its dependants
    before = {p.name for p in (tmp_path / "runs").iterdir()}
    run_profile("smoke", out_dir=tmp_path / "executed", only=["02_squad"])
    assert {p.name for p in (tmp_path / "runs").iterdir()} == before
    changed = tmp_path / "lam.yaml"
    changed.write_text(yaml.safe_dump({**load_profile("smoke"), "lam": 0.5}))
    run_profile(str(changed), out_dir=tmp_path / "executed", only=["02_squad"])
    new = {p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir()} - {p.rsplit("-", 1)[0] for p in before}
    added = [p.name.rsplit("-", 1)[0] for p in (tmp_path / "runs").iterdir() if p.name not in before]
    assert set(added) == {"inject", "answers"} and not new - {"inject", "answers"}
