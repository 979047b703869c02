"""The README's worked example of the public API runs as written, and does what it says."""

import re
import shlex

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


def readme_commands() -> list[list[str]]:
    """Every command line of the README's bash blocks, its comment dropped."""
    text = (ROOT / "README.md").read_text()
    lines = [line.split("  #")[0].strip() for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S)
             for line in block.splitlines()]
    return [shlex.split(line) for line in lines if line]


def test_the_readme_is_short_and_starts_with_install_and_a_run():
    text = (ROOT / "README.md").read_text()
    assert len(text.splitlines()) <= 300
    first_screen = "\n".join(text.splitlines()[:25])
    assert "make install" in first_screen and "source .venv/bin/activate" in first_screen
    assert "pastkit run --profile quick" in first_screen
    assert not re.search(r"\b[0-9a-f]{7,40}\b", text), "no commit hashes: history is in git and provenance"


def test_every_readme_command_is_one_the_kit_accepts_as_written():
    """Each `pastkit`, `papermill`, `make` and `python` line of the README parses: CLI options exist, notebooks,
    profiles and scripts exist, and every `-p` name is a parameter of the notebook it is given to."""
    from pastkit.cli import _parser
    from pastkit.driver import NOTEBOOKS

    makefile = (ROOT / "Makefile").read_text()
    seen = set()
    for argv in readme_commands():
        seen.add(argv[0])
        if argv[0] == "pastkit":
            try:
                args = _parser().parse_args(argv[1:])
            except SystemExit as e:  # --version prints and exits 0
                assert e.code == 0 and argv[1:] == ["--version"], argv
                continue
            if args.command == "run":
                assert (ROOT / "params" / f"{args.profile}.yaml").exists(), argv
                assert set(args.only or []) <= set(NOTEBOOKS), argv
                declared = set().union(*(NOTEBOOKS[n].names() for n in args.only or NOTEBOOKS))
                assert {name for name, _ in args.parameter} <= declared, argv
        elif argv[0] == "papermill":
            notebook = next(a for a in argv if a.endswith(".ipynb"))
            assert (ROOT / notebook).exists(), argv
            names = NOTEBOOKS[notebook.split("/")[-1].removesuffix(".ipynb")].names()
            for flag, value in zip(argv, argv[1:]):
                if flag == "-p":
                    assert value in names, argv
                if flag == "-f":
                    assert (ROOT / value).exists(), argv
        elif argv[0] == "make":
            assert f"\n{argv[1]}:" in makefile, argv
        elif argv[0] == "python":
            assert (ROOT / argv[1]).exists() or argv[1] == "-m", argv
        elif argv[0] == "source":
            assert argv[1] == ".venv/bin/activate"
        else:
            raise AssertionError(f"the README runs {argv[0]!r}, which this test does not check")
    assert {"make", "pastkit", "papermill"} <= seen
