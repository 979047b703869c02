"""Outputs never touch inputs or anything the kit did not write; bad files are refused with a message
naming them; faults end cleanly. One test per case reported against the previous release."""

import json
import os
import subprocess
import sys
import time

import pytest
import torch
import yaml
from conftest import listing, llama_like, save_ckpt

from pastkit import CheckpointError, SkillVector, inject
from pastkit.cli import main
from pastkit.driver import collect
from pastkit.outputs import OutputError


def _tree(path):
    """Every file under path with its bytes: to show an input is untouched."""
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*")) if p.is_file()}


# ---- data loss ----------------------------------------------------------------------------------------------

def test_cosine_never_overwrites_its_base_and_needs_force(trio, tmp_path, capsys):
    sft_dir, rl_dir, target_dir, *_ = trio
    before = _tree(sft_dir)
    assert main(["cosine", str(rl_dir), str(target_dir), "--base", str(sft_dir), "-o", str(sft_dir)]) == 2
    assert "is the input" in capsys.readouterr().err and _tree(sft_dir) == before
    assert main(["cosine", str(rl_dir), str(target_dir), "--base", str(sft_dir), "-o", str(sft_dir / "x.csv")]) == 2
    out = tmp_path / "t.csv"
    out.write_text("my notes")
    assert main(["cosine", str(rl_dir), str(target_dir), "--base", str(sft_dir), "-o", str(out)]) == 2
    assert main(["cosine", str(rl_dir), str(target_dir), "--base", str(sft_dir), "-o", str(out), "--force"]) == 2
    assert out.read_text() == "my notes"  # not the kit's file: --force does not replace it
    mine = tmp_path / "mine.csv"
    assert main(["cosine", str(rl_dir), str(target_dir), "--base", str(sft_dir), "-o", str(mine)]) == 0
    assert main(["cosine", str(rl_dir), str(target_dir), "--base", str(sft_dir), "-o", str(mine), "--force"]) == 0


def test_inject_and_extract_refuse_to_write_over_their_inputs(trio, tmp_path, capsys):
    sft_dir, rl_dir, target_dir, *_ = trio
    v = tmp_path / "v.safetensors"
    assert main(["vector", "extract", "--rl", str(rl_dir), "--sft", str(sft_dir), "-o", str(v)]) == 0
    snapshot = {d: _tree(d) for d in (sft_dir, rl_dir, target_dir)}
    assert main(["vector", "inject", "--model", str(target_dir), "--vector", str(v), "-o", str(target_dir),
                 "--force"]) == 2
    assert main(["vector", "extract", "--rl", str(rl_dir), "--sft", str(sft_dir), "-o", str(rl_dir), "--force"]) == 2
    shard = sorted(rl_dir.glob("*.safetensors"))[0]
    assert main(["vector", "extract", "--rl", str(rl_dir), "--sft", str(sft_dir), "-o", str(shard), "--force"]) == 2
    assert main(["vector", "inject", "--model", str(target_dir), "--vector", str(v), "-o", str(v), "--force"]) == 2
    assert main(["vector", "inject", "--model", str(target_dir), "--vector", str(v), "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert err.count("pastkit: error: output") == 5 and "lies inside the input" in err and "contains" in err
    assert {d: _tree(d) for d in (sft_dir, rl_dir, target_dir)} == snapshot


def test_a_folder_that_appears_at_the_output_during_inject_is_kept(trio, tmp_path, monkeypatch):
    sft_dir, rl_dir, target_dir, *_ = trio
    import pastkit.skill_vector as sv
    real = sv.write_safetensors
    out = tmp_path / "out"

    def racing(path, *args, **kw):  # the user creates the output folder while the kit works
        out.mkdir(exist_ok=True)
        (out / "precious.txt").write_text("keep me")
        return real(path, *args, **kw)

    monkeypatch.setattr(sv, "write_safetensors", racing)
    with pytest.raises(OutputError, match="exists"):
        inject(target_dir, SkillVector.extract(rl_dir, sft_dir), out)
    assert (out / "precious.txt").read_text() == "keep me" and listing(out) == ["precious.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no temporary left either


# ---- silent wrong results -----------------------------------------------------------------------------------

def test_a_model_is_not_a_vector_and_a_vector_is_not_a_model(trio, tmp_path, capsys):
    sft_dir, rl_dir, target_dir, *_ = trio
    single = save_ckpt(tmp_path / "single", llama_like(5))
    v = tmp_path / "v.safetensors"
    SkillVector.extract(rl_dir, sft_dir).save(v)
    with pytest.raises(CheckpointError, match="not a skill vector"):
        inject(target_dir, single / "model.safetensors", tmp_path / "out")
    assert main(["vector", "extract", "--rl", str(v), "--sft", str(sft_dir), "-o", str(tmp_path / "w")]) == 2
    assert "is a skill vector" in capsys.readouterr().err
    with pytest.raises(CheckpointError, match="is a skill vector"):
        inject(v, v, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def _write_raw(path, header: object, data: bytes = b"\0" * 64):
    blob = json.dumps(header).encode()
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)
    return path


@pytest.mark.parametrize("header, message", [
    ({"w": {"dtype": "F32", "shape": [16], "data_offsets": [-64, 0]}}, "malformed header entry"),
    ({"a": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]},
      "b": {"dtype": "F32", "shape": [8], "data_offsets": [32, 64]}}, "overlaps"),
    ({"__metadata__": ["x"], "w": {"dtype": "F32", "shape": [16], "data_offsets": [0, 64]}}, "__metadata__"),
    ({"w": {"dtype": "F32", "shape": [15.5], "data_offsets": [0, 64]}}, "malformed header entry"),
    ({"w": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}}, "trailing bytes"),
    ([1, 2, 3], "not an object"),
    ({"w": {"dtype": "F8_E4M3", "shape": [64], "data_offsets": [0, 64]}}, "F8_E4M3, which pastkit does not support"),
])
def test_headers_are_validated_as_strictly_as_safetensors(tmp_path, header, message):
    from safetensors import safe_open

    f = _write_raw(tmp_path / "v.safetensors", header)
    with pytest.raises(CheckpointError, match=message):
        SkillVector.load(f)
    if "F8" not in message:  # the reference implementation rejects every one of these files too
        with pytest.raises(Exception):  # noqa: B017
            with safe_open(f, "pt") as g:
                [g.get_tensor(k) for k in g.keys()]


def test_inject_copies_no_weights_it_did_not_write(trio, tmp_path):
    sft_dir, rl_dir, target_dir, *_ = trio
    (target_dir / "pytorch_model.bin").write_bytes(b"pickle, not injected")
    (target_dir / "pytorch_model.bin.index.json").write_text("{}")
    (target_dir / "tokenizer.json").write_text("{}")
    out = inject(target_dir, SkillVector.extract(rl_dir, sft_dir), tmp_path / "out")
    names = listing(out)
    assert "pytorch_model.bin" not in names and "pytorch_model.bin.index.json" not in names
    assert {"config.json", "tokenizer.json", "tokenizer_config.json", "pastkit_provenance.json"} <= set(names)


def test_a_model_dir_needs_its_config(trio, tmp_path):
    sft_dir, rl_dir, *_ = trio
    (rl_dir / "config.json").unlink()
    with pytest.raises(CheckpointError, match="no config.json"):
        SkillVector.extract(rl_dir, sft_dir)


def test_finished_stages_are_verified_and_empty_products_are_not_cached(tmp_path, monkeypatch):
    from pastkit.stages import StageError, run_stage
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    quiet = {"log": lambda *_: None}
    stage = run_stage("answers", {"x": 1}, lambda d: (d / "answers.csv").write_text("score\n0.1\n"),
                      expect=("answers.csv",), **quiet)
    (stage.path / "answers.csv").write_text("score\n1.0\n")  # someone "fixes" a result by hand
    with pytest.raises(StageError, match=r"answers\.csv was changed"):
        run_stage("answers", {"x": 1}, lambda d: None, **quiet)
    with pytest.raises(StageError, match="missing or empty"):
        run_stage("answers", {"x": 2}, lambda d: (d / "answers.csv").write_text(""), expect=("answers.csv",), **quiet)
    built = run_stage("answers", {"x": 2}, lambda d: (d / "answers.csv").write_text("score\n0.5\n"),
                      expect=("answers.csv",), **quiet)  # the failed build left nothing that blocks a retry
    assert (built.path / "answers.csv").read_text() == "score\n0.5\n"


def test_nan_and_zero_deltas_in_cosine_are_reported(tmp_path, capsys):
    base = llama_like(0)
    b = save_ckpt(tmp_path / "base", base)
    a = save_ckpt(tmp_path / "a", {k: t + 1 for k, t in base.items()})
    bad = dict(base)
    bad["model.norm.weight"] = torch.full_like(base["model.norm.weight"], float("nan"))
    n = save_ckpt(tmp_path / "n", bad)
    assert main(["cosine", str(a), str(n), "--base", str(b), "-o", str(tmp_path / "n.csv")]) == 2
    assert "model.norm.weight" in capsys.readouterr().err and not (tmp_path / "n.csv").exists()
    assert main(["cosine", str(a), str(b), "--base", str(b), "-o", str(tmp_path / "z.csv")]) == 2
    assert "zero delta" in capsys.readouterr().err
    part = dict(base)
    part["model.norm.weight"] = base["model.norm.weight"] + 1
    p = save_ckpt(tmp_path / "p", part)
    assert main(["cosine", str(a), str(p), "--base", str(b), "-o", str(tmp_path / "p.csv")]) == 0
    assert f"warning: {len(base) - 1} of {len(base)} tensors are unchanged" in capsys.readouterr().err


# ---- security -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("label", ["../escape", "/tmp/abs", "a/b", ".hidden"])
def test_profile_label_cannot_name_a_path(label):
    from pastkit.benchmarks.squad import SquadParams
    with pytest.raises(ValueError, match="plain name"):
        SquadParams(profile=label)


# ---- faults end cleanly, with a message ---------------------------------------------------------------------

@pytest.mark.parametrize("index, message", [
    ("{not json", "not valid JSON"), ("{}", "weight_map"), ("[]", "expected a JSON dict"),
    ('{"weight_map": {"w": "../outside.safetensors"}}', "not a file name inside"),
])
def test_bad_index_files_are_named(trio, index, message):
    sft_dir, rl_dir, *_ = trio
    (rl_dir / "model.safetensors.index.json").write_text(index)
    with pytest.raises(CheckpointError, match=message):
        SkillVector.extract(rl_dir, sft_dir)


@pytest.mark.parametrize("content, message", [(b"{oops", "not valid JSON"), (b"\xff\xfe\x00", "not UTF-8")])
def test_bad_config_files_are_named(trio, content, message):
    sft_dir, rl_dir, *_ = trio
    (rl_dir / "config.json").write_bytes(content)
    with pytest.raises(CheckpointError, match=rf"config\.json: {message}"):
        SkillVector.extract(rl_dir, sft_dir)


def test_adapter_config_without_rank_is_named(tmp_path):
    from pastkit.checkpoint import LoraAdapter
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "lora_alpha": 8}))
    save_ckpt(tmp_path / "w", {"x.lora_A.weight": torch.zeros(2, 4), "x.lora_B.weight": torch.zeros(4, 2)})
    os.replace(tmp_path / "w" / "model.safetensors", tmp_path / "a" / "adapter_model.safetensors")
    with pytest.raises(CheckpointError, match="needs a positive number 'r'"):
        LoraAdapter(tmp_path / "a")


def test_a_full_disk_ends_with_a_message_and_no_leftovers(trio, tmp_path):
    sft_dir, rl_dir, *_ = trio
    out = tmp_path / "outdir"
    out.mkdir()
    code = ("import resource, signal, sys; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            "resource.setrlimit(resource.RLIMIT_FSIZE, (4096, 4096)); from pastkit.cli import main; "
            f"sys.exit(main(['vector', 'extract', '--rl', '{rl_dir}', '--sft', '{sft_dir}', "
            f"'-o', '{out / 'v.safetensors'}']))")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "pastkit: error:" in r.stderr and "Traceback" not in r.stderr, r.stderr
    assert listing(out) == []


def test_unwritable_output_ends_with_a_message(trio, tmp_path, capsys):
    sft_dir, rl_dir, *_ = trio
    (tmp_path / "a-file").write_text("not a folder")
    assert main(["vector", "extract", "--rl", str(rl_dir), "--sft", str(sft_dir),
                 "-o", str(tmp_path / "a-file" / "v.safetensors")]) == 2
    assert "pastkit: error:" in capsys.readouterr().err


def test_malformed_profile_and_passages_files_are_named(tmp_path):
    from pastkit.benchmarks.squad import load_passages
    from pastkit.config import load_profile
    (tmp_path / "p.yaml").write_text("lam: [1.0\n")
    with pytest.raises(ValueError, match=r"p\.yaml: not valid YAML"):
        load_profile(tmp_path / "p.yaml")
    (tmp_path / "x.json").write_bytes(b"[{\"title\": \"\xe9\"}]")
    with pytest.raises(ValueError, match=r"x\.json: not UTF-8"):
        load_passages(tmp_path / "x.json")


def test_a_learning_rate_written_5e_5_is_a_float_in_profiles_and_on_the_command_line(tmp_path):
    """YAML 1.1 reads 5e-5 as a string, which a float parameter refuses; the kit's reader takes it as the number."""
    from pastkit.benchmarks.squad import SquadParams
    from pastkit.config import load_profile, read_yaml
    assert read_yaml("5e-5") == 5e-5 and read_yaml("-2E+3") == -2000.0 and read_yaml("5.0e-5") == 5e-5
    assert read_yaml("abc") == "abc" and read_yaml("12") == 12 and read_yaml("[0, 1]") == [0, 1]
    (tmp_path / "p.yaml").write_text("rl_lr: 5e-5\n")
    assert SquadParams.from_profile(load_profile(tmp_path / "p.yaml")).rl_lr == 5e-5
    with pytest.raises(yaml.constructor.ConstructorError):  # still the safe loader: no Python objects
        read_yaml("!!python/object/apply:os.system ['true']")


def test_inject_into_an_adapter_uses_the_base_it_records(tiny_model, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    peft_model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_model),
                                LoraConfig(r=2, target_modules=["q_proj"], init_lora_weights=False))
    peft_model.save_pretrained(tmp_path / "adapter")
    cfg = tmp_path / "adapter" / "adapter_config.json"
    cfg.write_text(cfg.read_text().replace(json.loads(cfg.read_text())["base_model_name_or_path"], str(tiny_model)))
    v = SkillVector.extract(tmp_path / "adapter", tiny_model, base=tiny_model)
    out = inject(tmp_path / "adapter", v, tmp_path / "out")  # no base=: the adapter's own record is used
    assert (out / "config.json").exists() and (out / "tokenizer_config.json").exists()
    cfg.write_text(cfg.read_text().replace(str(tiny_model), "/nonexistent/base"))
    with pytest.raises(CheckpointError, match="names '/nonexistent/base', not found here"):
        inject(tmp_path / "adapter", v, tmp_path / "out2")


def _build_demo_stage(log_file):
    from pastkit.stages import run_stage

    def build(d):
        with open(log_file, "a") as f:
            f.write("built\n")
        time.sleep(0.5)
        (d / "out.txt").write_text("built")

    run_stage("demo", {"p": 1}, build, log=lambda *_: None, expect=("out.txt",))


def test_two_processes_building_one_stage_build_it_once(tmp_path, monkeypatch):
    import multiprocessing
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    stale = tmp_path / ".grpo-abc.tmp-4194400"  # left by a killed run (that pid does not exist)
    stale.mkdir()
    (stale / "weights").write_bytes(b"x" * 1000)
    ctx = multiprocessing.get_context("fork")
    procs = [ctx.Process(target=_build_demo_stage, args=(tmp_path / "builds.log",)) for _ in range(2)]
    [p.start() for p in procs]
    [p.join(60) for p in procs]
    assert [p.exitcode for p in procs] == [0, 0]
    assert (tmp_path / "builds.log").read_text() == "built\n"  # the second process waited and reused the stage
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("demo-")] and not stale.exists()


@pytest.mark.parametrize("override, message", [
    ({"lam": float("nan")}, "lam=nan: must be a finite number"), ({"max_seq_len": 0}, "max_seq_len=0"),
    ({"rl_prompts": 0}, "rl_prompts=0"), ({"cpt_lr": -1e-5}, "learning rates must be > 0"),
])
def test_bad_parameters_stop_before_any_work(override, message):
    from pastkit.benchmarks.squad import SquadParams
    with pytest.raises(ValueError, match=message):
        SquadParams(**override)


def test_bad_input_files_stop_before_any_work(tmp_path):
    passages = [{"title": "t", "context": "c", "questions": [{"question": "q?", "answer": "a"}]}]
    good = tmp_path / "good.json"
    good.write_text(json.dumps(passages))
    collect("02_squad", {"target_passages": str(good), "n_target": 1, "n_single": 1})
    with pytest.raises(FileNotFoundError, match="missing.json"):
        collect("02_squad", {"target_passages": str(tmp_path / "missing.json")})
    with pytest.raises(ValueError, match="has 1 passages, but n_target/n_single ask for 16"):
        collect("02_squad", {"target_passages": str(good)})
    nulls = tmp_path / "nulls.json"
    nulls.write_text(json.dumps([{**passages[0], "questions": [{"question": None, "answer": "a"}]}]))
    with pytest.raises(ValueError, match="not a non-empty string"):
        collect("02_squad", {"target_passages": str(nulls), "n_target": 1, "n_single": 1})


def test_messages_name_the_side_that_lacks_a_tensor(tmp_path):
    full = llama_like(1)
    short = {k: v for k, v in full.items() if k != "model.norm.weight"}
    with pytest.raises(CheckpointError, match=r"1 only in sft .*model\.norm\.weight"):
        SkillVector.extract(save_ckpt(tmp_path / "rl", short), save_ckpt(tmp_path / "sft", full))


def test_hub_ids_load_through_the_hub_or_say_it_is_unreachable(tiny_model, monkeypatch):
    from pastkit import models
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(RuntimeError, match="could not be fetched from the Hugging Face hub"):
        models.resolve("Qwen/Qwen2.5-7B")
    seen = {}

    def fake_download(repo_id, allow_patterns):
        seen["repo"], seen["patterns"] = repo_id, allow_patterns
        return str(tiny_model)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_download)
    assert models.resolve("Qwen/Qwen2.5-7B") == tiny_model
    assert seen["repo"] == "Qwen/Qwen2.5-7B" and not any(p.endswith(".bin") for p in seen["patterns"])


def test_provenance_commit_is_dirty_for_edited_source_not_for_rewritten_figures(tmp_path, monkeypatch):
    """A reference run rewrites figures/ and the results pages; only an edit elsewhere marks the recorded commit
    "+dirty", so the second notebook of a run is not marked dirty by the first one's results."""
    from pastkit import places

    def git(*args):
        subprocess.run(["git", "-C", str(tmp_path), *args], check=True, capture_output=True)

    (tmp_path / "figures").mkdir()
    (tmp_path / "figures" / "table.csv").write_text("a\n")
    (tmp_path / "docs" / "results").mkdir(parents=True)
    (tmp_path / "docs" / "results" / "02_squad.md").write_text("a\n")
    (tmp_path / "code.py").write_text("x = 1\n")
    git("init", "-q")
    git("add", ".")
    git("-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "init")
    monkeypatch.setattr(places, "ROOT", tmp_path)
    monkeypatch.setattr(places, "FIGURES", tmp_path / "figures")
    monkeypatch.setattr(places, "PAGES", tmp_path / "docs" / "results")
    assert not places.git_commit().endswith("+dirty")
    (tmp_path / "figures" / "table.csv").write_text("b\n")
    (tmp_path / "docs" / "results" / "02_squad.md").write_text("b\n")
    assert not places.git_commit().endswith("+dirty")
    (tmp_path / "code.py").write_text("x = 2\n")
    assert places.git_commit().endswith("+dirty")


def test_provenance_names_the_machine_a_result_was_made_on(tmp_path):
    """bf16 numbers differ between CPUs with and without AMX, so every result records the CPU and library versions."""
    from importlib import metadata

    from pastkit import report
    from pastkit.benchmarks.squad import SquadParams

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: TestVendor\ncpu family\t: 26\nmodel\t\t: 2\n"
                       "model name\t: Test CPU 9000\nstepping\t: 1\nflags\t\t: fpu sse2 avx512_bf16 amx_bf16 amx_tile\n"
                       "processor\t: 1\nvendor_id\t: TestVendor\ncpu family\t: 25\nmodel name\t: Test CPU 9000\n"
                       "flags\t\t: fpu\n")
    seen = report.machine(cpuinfo)
    assert seen["cpu"] == "Test CPU 9000" and seen["bf16"] == ["amx_bf16", "avx512_bf16"]
    # one vague model name covers several generations: the family, model and stepping tell them apart
    assert seen["cpu_id"] == "TestVendor cpu family 26 model 2 stepping 1"
    assert seen["torch"] == metadata.version("torch") and seen["trl"] == metadata.version("trl")
    assert report.machine(tmp_path / "absent")["bf16"] == []
    assert report.provenance(SquadParams(), "02_squad")["machine"] == report.machine()


def test_a_figure_carries_one_caption_the_one_of_what_made_it(tmp_path):
    """05's controls run on other seeds than the notebook: their figure had the notebook's caption ("seed 0")
    drawn over its own ("seeds 0, 1, 2")."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pastkit import report
    from pastkit.benchmarks.squad import SquadParams

    params = SquadParams(results_dir=str(tmp_path), seeds=[0])
    on_seeds = SquadParams(seeds=[0, 1, 2]).caption()
    assert on_seeds != params.caption() and params.caption() not in on_seeds
    captions = {}
    for case, caption in [("own", on_seeds), ("notebook's", None)]:
        fig = plt.figure()
        fig.suptitle(on_seeds, y=0.0, va="top")
        report.save_figure(fig, f"controls-{case}", params, "05_ablations", caption=caption)
        captions[case] = [t.get_text() for t in fig.texts]
        plt.close(fig)
    assert captions["own"] == [on_seeds]  # the suptitle alone: it already says what made the figure
    assert captions["notebook's"] == [on_seeds, params.caption()]
    assert (tmp_path / "controls-own.png").exists()
