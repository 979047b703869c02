"""Extraction and injection hold a few tensors at a time, never the model (checked on peak RSS)."""

import shutil
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import save_ckpt

TENSOR_MB = 16
N_TENSORS = 24  # 384 MB per checkpoint, in 6 shards of 64 MB


@pytest.fixture
def work(tmp_path):
    """A folder removed after the test: its four checkpoints and vector take about 1.9 GB of the temp disk."""
    yield tmp_path / "work"
    shutil.rmtree(tmp_path / "work", ignore_errors=True)


def test_peak_memory_is_bounded_by_tensors_not_model(work):
    rows = TENSOR_MB * 2**20 // 4 // 1024
    for name, seed in (("sft", 0), ("rl", 1), ("t", 2)):
        g = torch.Generator().manual_seed(seed)
        tensors = {f"model.layers.{i}.mlp.up_proj.weight": torch.randn(rows, 1024, generator=g)
                   for i in range(N_TENSORS)}
        save_ckpt(work / name, tensors, shards=6)
        del tensors
    script = textwrap.dedent(f"""
        import resource, sys
        import pastkit
        from pastkit import SkillVector, inject
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        v = SkillVector.extract("{work}/rl", "{work}/sft")
        v.save("{work}/v.safetensors")
        inject("{work}/t", "{work}/v.safetensors", "{work}/out", lam=1.0)
        print((resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    growth_mb = float(out.stdout.strip().splitlines()[-1])
    model_mb = TENSOR_MB * N_TENSORS
    # A few fp32 working copies of one tensor; loading any whole checkpoint would exceed this.
    assert growth_mb < 8 * TENSOR_MB < model_mb, f"peak RSS grew {growth_mb:.0f} MB for a {model_mb} MB model"
