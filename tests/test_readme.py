"""The README's worked example of the public API runs as written, and does what it says."""

import re

import pytest
import torch

from pastkit.places import ROOT


def readme_example() -> str:
    text = (ROOT / "README.md").read_text()
    section = text.split("## Use pastkit in your own study", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, flags=re.S)
    assert len(blocks) == 1, "the section holds exactly one Python example"
    return blocks[0]


def test_the_readme_api_example_runs(tmp_path, monkeypatch, capsys):
    import matplotlib
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme"})
    work = tmp_path / "my-study"
    for name in ("sft", "rl", "v.safetensors", "base+v", "cosine.png"):
        assert (work / name).exists(), name
    from pastkit import SkillVector
    v = SkillVector.load(work / "v.safetensors")
    assert v.norm() > 0 and "‖v‖=" in capsys.readouterr().out
    from conftest import load_dir
    base, injected = load_dir(work / "base"), load_dir(work / "base+v")
    k = "model.layers.0.mlp.up_proj.weight"
    assert torch.allclose(injected[k], base[k] + 0.5 * v.get(k), atol=1e-6)


@pytest.mark.parametrize("name", ["make test", "make figures"])
def test_the_readme_quick_start_commands_exist(name):
    assert f"{name.split()[1]}:" in (ROOT / "Makefile").read_text() and name in (ROOT / "README.md").read_text()
