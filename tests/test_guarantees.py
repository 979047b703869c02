"""The write rules and the refusals hold for every entry point: the Python API as the CLI, the stage cache, the
results folder, the notebooks' parameters. One test per case a user found broken, named after what it guarantees."""

import json
import os
import re
import resource
import shutil
import subprocess
import sys
import time
import warnings

import pytest
import torch
from conftest import llama_like, save_ckpt
from safetensors.torch import save_file

from pastkit import CheckpointError, SkillVector, inject
from pastkit.cli import main
from pastkit.driver import collect
from pastkit.outputs import OutputError
from pastkit.skill_vector import DegenerateWarning

QUIET = {"log": lambda *_: None}


def _sha(path):
    import hashlib
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---- data loss and silent reuse -----------------------------------------------------------------------------

def test_other_weights_under_the_same_model_path_rebuild_every_stage_that_depends_on_them(tmp_path, monkeypatch):
    from test_engine import Toy, ToyParams

    from pastkit.models import make_tiny_model
    from pastkit.past import Study

    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    model = make_tiny_model(tmp_path / "M", seed=0)
    params = ToyParams(model=str(model), rounds=1)

    def run():
        lines = []
        Study.run(Toy(), params, log=lines.append)
        return [x.split()[0] for x in lines if x.startswith(("[run]", "[cached]"))]

    first = run()
    assert first.count("[run]") >= 3 and "[cached]" not in first
    os.utime(model / "model.safetensors")  # touched, same bytes: nothing to rebuild
    assert set(run()) == {"[cached]"}
    other = make_tiny_model(tmp_path / "other", seed=1)
    assert (other / "model.safetensors").stat().st_size == (model / "model.safetensors").stat().st_size
    shutil.copy(other / "model.safetensors", model / "model.safetensors")  # same size, same config, other weights
    assert run() == first  # every stage built again, none read back


def test_results_dir_figures_is_refused_outside_the_reference_run(monkeypatch):
    from pastkit.benchmarks.squad import SquadParams
    from pastkit.places import FIGURES, REFERENCE_RUN, results_folder

    monkeypatch.delenv(REFERENCE_RUN, raising=False)
    for where in ("figures", "figures/sub", str(FIGURES), "notebooks/../figures"):
        with pytest.raises(ValueError, match="only the reference run writes there"):
            collect("02_squad", {"results_dir": where, "profile": "smoke"})
    monkeypatch.setenv(REFERENCE_RUN, "1")
    assert results_folder(SquadParams(results_dir="figures")) == FIGURES


def test_the_driver_tells_only_the_reference_run_it_may_write_figures(tmp_path, monkeypatch):
    from pastkit import driver
    from pastkit.places import REFERENCE_RUN

    seen = []
    monkeypatch.setattr(driver, "_execute", lambda names, params, *a: seen.append(
        (params[names[0]].get("results_dir"), os.environ.get(REFERENCE_RUN))))
    monkeypatch.delenv(REFERENCE_RUN, raising=False)
    driver.run_profile("cpu", only=["02_squad"], reference=True)
    driver.run_profile("smoke", only=["02_squad"])
    assert seen == [("figures", "1"), (None, None)] and REFERENCE_RUN not in os.environ
    profile = tmp_path / "mine.yaml"  # a profile that names figures/ itself
    profile.write_text((driver.ROOT / "params" / "smoke.yaml").read_text() + "\nresults_dir: figures\n")
    with pytest.raises(ValueError, match="only the reference run writes there"):
        driver.run_profile(str(profile), only=["02_squad"])
    assert len(seen) == 2


def test_force_never_deletes_a_file_the_user_put_in_a_kit_folder(trio, tmp_path, capsys):
    sft_dir, rl_dir, target_dir, *_ = trio
    v, out = tmp_path / "v.safetensors", tmp_path / "O" / "m"
    assert main(["vector", "extract", "--rl", str(rl_dir), "--sft", str(sft_dir), "-o", str(v)]) == 0
    assert main(["vector", "inject", "--model", str(target_dir), "--vector", str(v), "-o", str(out)]) == 0
    assert main(["vector", "inject", "--model", str(target_dir), "--vector", str(v), "-o", str(out), "--force"]) == 0
    (out / "notes.md").write_text("my notes")
    assert main(["vector", "inject", "--model", str(target_dir), "--vector", str(v), "-o", str(out), "--force"]) == 2
    assert "notes.md was not put there by pastkit" in capsys.readouterr().err
    assert (out / "notes.md").read_text() == "my notes"
    (out / "notes.md").unlink()
    with open(out / "config.json", "a") as f:  # a kit file the user edited is theirs now
        f.write(" ")
    assert main(["vector", "inject", "--model", str(target_dir), "--vector", str(v), "-o", str(out), "--force"]) == 2


def test_a_users_provenance_named_file_is_never_overwritten(trio, tmp_path, capsys):
    sft_dir, rl_dir, target_dir, *_ = trio
    mine = tmp_path / "x.csv.provenance.json"
    mine.write_text("my own notes about x.csv")
    argv = ["cosine", str(rl_dir), str(target_dir), "--base", str(sft_dir), "-o", str(tmp_path / "x.csv")]
    assert main(argv) == 2 and main(argv + ["--force"]) == 2
    assert "x.csv.provenance.json exists and was not written by pastkit" in capsys.readouterr().err
    assert mine.read_text() == "my own notes about x.csv" and not (tmp_path / "x.csv").exists()


def test_pruning_never_deletes_a_stage_a_running_process_uses(tmp_path, monkeypatch):
    from pastkit import stages

    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    used = stages.run_stage("answers", {"x": 1}, lambda d: (d / "a.csv").write_text("1"), expect=("a.csv",), **QUIET)
    other = subprocess.run([sys.executable, "-c", "import time; from pastkit.stages import prune; "
                            "print(len(prune(time.time() + 60, delete=True)))"],
                           env={**os.environ, "PASTKIT_RUNS": str(tmp_path)}, capture_output=True, text=True)
    assert other.stdout.splitlines()[-1] == "0" and "in use by a running process" in other.stdout  # another process
    assert (used.path / "stage.json").exists()
    assert stages.prune(time.time() + 60, delete=True, **QUIET) == []  # and in this very process
    again = stages.run_stage("answers", {"x": 1}, lambda d: 1 / 0, expect=("a.csv",), **QUIET)  # read back
    assert again.path == used.path
    stages.release()
    assert [c.path for c in stages.prune(time.time() + 60, delete=True, **QUIET)] == [used.path]


def test_a_process_waiting_for_a_stage_another_builds_reads_it_while_the_builder_runs_on(tmp_path):
    """The builder keeps using the stage (and holds it) after building it; the waiter must not wait for it to exit."""
    # the builder finishes only after the waiter, its imports done, is about to ask for the stage (a fixed sleep
    # was too short on a loaded machine: the waiter then found the stage finished and never waited)
    script = ("import sys, time; from pathlib import Path; from pastkit.stages import run_stage\n"
              "asking = Path(sys.argv[2]).with_name('asking')\n"
              "def build(d):\n    Path(sys.argv[2]).touch()\n"
              "    while not asking.exists(): time.sleep(0.05)\n"
              "    time.sleep(0.5); (d / 'f').write_text('1')\n"
              "if sys.argv[1] == 'waiter': asking.touch()\n"
              "run_stage('s', {}, build, log=lambda m: print(m, flush=True))\n"
              "if sys.argv[1] == 'builder':\n"
              "    t = time.time()\n"
              "    while not Path(sys.argv[3]).exists() and time.time() - t < 60: time.sleep(0.05)\n"
              "else:\n    Path(sys.argv[3]).touch()\n")
    env = {**os.environ, "PASTKIT_RUNS": str(tmp_path / "runs")}
    started, waiter_done = tmp_path / "started", tmp_path / "waiter-done"
    builder = subprocess.Popen([sys.executable, "-c", script, "builder", str(started), str(waiter_done)], env=env,
                               stdout=subprocess.PIPE, text=True)
    while not started.exists():
        time.sleep(0.05)
    waiter = subprocess.run([sys.executable, "-c", script, "waiter", str(started), str(waiter_done)], env=env,
                            capture_output=True, text=True, timeout=45)
    assert "[wait]" in waiter.stdout and "[cached]" in waiter.stdout and waiter_done.exists()
    assert builder.wait(timeout=45) == 0 and "[run]" in builder.stdout.read()


def test_a_process_that_exits_lets_go_of_its_stages(tmp_path):
    env = {**os.environ, "PASTKIT_RUNS": str(tmp_path)}
    subprocess.run([sys.executable, "-c", "from pastkit.stages import run_stage; run_stage('s', {}, lambda d: "
                    "(d / 'f').write_text('1'), log=lambda *_: None)"], env=env, check=True)
    out = subprocess.run([sys.executable, "-c", "import time; from pastkit.stages import prune; "
                          "print(len(prune(time.time() + 60, delete=True)))"], env=env, capture_output=True, text=True)
    assert out.stdout.strip() == "1"


def test_training_never_writes_over_its_start_model_and_replaces_only_with_force(tiny_model, tmp_path):
    from pastkit.knowledge import SFTSpec, train_sft
    from pastkit.models import make_tiny_model
    from pastkit.skill_rl import GRPOSpec, RLTask, train_grpo

    base = make_tiny_model(tmp_path / "base")
    before = _sha(base / "model.safetensors")
    docs, spec = [{"text": "The comet Hala returns every 41 years."}], SFTSpec(1, 1e-3, 1, 1, 32)
    for out in (base, base / "inner"):
        with pytest.raises(OutputError, match="input"):
            train_sft(base, docs, out, spec, seed=0, **QUIET)
    assert _sha(base / "model.safetensors") == before
    train_sft(base, docs, tmp_path / "sft", spec, seed=0, **QUIET)
    with pytest.raises(OutputError, match="exists; pass force=True"):
        train_sft(base, docs, tmp_path / "sft", spec, seed=0, **QUIET)
    train_sft(base, docs, tmp_path / "sft", spec, seed=0, force=True, **QUIET)
    task = RLTask(["Q?"], [lambda prompts, completions, **_: [float(len(c[-1]["content"]) % 2) for c in completions]])
    gspec = GRPOSpec(1, 1e-3, 2, 1, 0.0, 1.0, 1.0, 0, 4)
    with pytest.raises(OutputError, match="is the input"):
        train_grpo(tmp_path / "sft", task, tmp_path / "sft", gspec, seed=0, **QUIET)
    train_grpo(tmp_path / "sft", task, tmp_path / "rl", gspec, seed=0, **QUIET)
    with pytest.raises(OutputError, match="exists; pass force=True"):
        train_grpo(tmp_path / "sft", task, tmp_path / "rl", gspec, seed=0, **QUIET)


def test_the_readme_study_example_runs_twice_in_a_row(tmp_path, monkeypatch):
    import matplotlib
    from test_readme import readme_example
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PASTKIT_CACHE", str(tmp_path / "cache"))
    for _ in range(2):
        exec(compile(readme_example(), "README.md", "exec"), {"__name__": "readme"})


def test_the_stage_cache_and_results_never_go_inside_the_model(tmp_path, monkeypatch):
    from test_engine import Toy, ToyParams

    from pastkit.models import make_tiny_model
    from pastkit.past import Engine

    model = make_tiny_model(tmp_path / "M")
    before = sorted(p.name for p in model.rglob("*"))
    monkeypatch.setenv("PASTKIT_RUNS", str(model / "runs"))
    with pytest.raises(OutputError, match="stage cache .* lies inside the model dir"):
        Engine(Toy(), ToyParams(model=str(model)), seed=0)
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path / "runs"))
    with pytest.raises(OutputError, match="results folder .* lies inside the model dir"):
        Engine(Toy(), ToyParams(model=str(model), results_dir=str(model / "out")), seed=0)
    assert sorted(p.name for p in model.rglob("*")) == before


# ---- silent wrong results -----------------------------------------------------------------------------------

def test_a_vector_of_a_shallower_model_is_refused_by_a_deeper_one(tmp_path):
    sft2, sft3 = llama_like(1, layers=2), llama_like(2, layers=3)
    save_ckpt(tmp_path / "sft", sft2)
    save_ckpt(tmp_path / "rl", {k: t + 0.01 for k, t in sft2.items()})
    save_ckpt(tmp_path / "deep", sft3)
    v = SkillVector.extract(tmp_path / "rl", tmp_path / "sft")
    with pytest.raises(CheckpointError, match=r"not 9 of the model's \(model.layers.2"):
        inject(tmp_path / "deep", v, tmp_path / "out")
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("dtype", [torch.int8, torch.int32])
def test_integer_weights_are_never_given_a_truncated_float_delta(trio, tmp_path, dtype):
    sft_dir, rl_dir, _, _, _, target = trio
    save_ckpt(tmp_path / "quantized", {k: (t * 10).to(dtype) for k, t in target.items()})
    with pytest.raises(CheckpointError, match=f"is {dtype}.*truncated"):
        inject(tmp_path / "quantized", SkillVector.extract(rl_dir, sft_dir), tmp_path / "out")


def test_injecting_a_zero_vector_is_said(trio, tmp_path, capsys):
    sft_dir, rl_dir, target_dir, *_ = trio
    with pytest.warns(DegenerateWarning, match="exactly zero, so the model was copied unchanged"):
        inject(target_dir, SkillVector.extract(sft_dir, sft_dir), tmp_path / "out")
    with warnings.catch_warnings():
        warnings.simplefilter("error", DegenerateWarning)  # a vector that is not zero says nothing
        inject(target_dir, SkillVector.extract(rl_dir, sft_dir), tmp_path / "out2")
    v = tmp_path / "zero.safetensors"
    with pytest.warns(DegenerateWarning):
        SkillVector.extract(sft_dir, sft_dir).save(v)
    assert main(["vector", "inject", "--model", str(target_dir), "--vector", str(v), "-o", str(tmp_path / "o3")]) == 0
    assert "pastkit: warning:" in (err := capsys.readouterr().err) and "copied unchanged" in err


def test_a_tensor_in_two_shards_is_refused(trio, tmp_path):
    _, _, target_dir, *_ = trio
    shards = sorted(target_dir.glob("model-*.safetensors"))
    dup = tmp_path / "dup"
    shutil.copytree(target_dir, dup)
    from safetensors.torch import load_file
    first = load_file(shards[0])
    name = next(iter(first))
    second = {**load_file(shards[1]), name: first[name] + 1}
    save_file(second, dup / shards[1].name, {"format": "pt"})
    with pytest.raises(CheckpointError, match=f"{re.escape(name)}' is in two shards"):
        SkillVector.extract(dup, target_dir)


def test_a_symlink_out_of_the_model_dir_is_never_copied_as_content(trio, tmp_path):
    sft_dir, rl_dir, target_dir, *_ = trio
    secret = tmp_path / "secret.txt"
    secret.write_text("not the model's")
    (target_dir / "tokenizer.json").symlink_to(secret)
    with pytest.raises(CheckpointError, match="tokenizer.json is a symlink to .* outside the model dir"):
        inject(target_dir, SkillVector.extract(rl_dir, sft_dir), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    (target_dir / "tokenizer.json").unlink()
    (target_dir / "tokenizer.json").symlink_to(target_dir / "tokenizer_config.json")  # inside: fine
    inject(target_dir, SkillVector.extract(rl_dir, sft_dir), tmp_path / "out")
    assert (tmp_path / "out" / "tokenizer.json").read_text() == "{}"


def test_the_judge_cache_knows_which_endpoint_gave_a_verdict(tmp_path):
    from pastkit.judges import LLMJudge, append_to_cache

    cache = tmp_path / "c.jsonl"
    first = LLMJudge(url="http://127.0.0.1:9/v1", model="m", cache=cache, retries=1, timeout=1)
    prompt = first.prompt.text.format(question="q", gold="g", pred="p")
    append_to_cache(cache, {"key": first.cache_key(prompt), "score": 1.0})
    assert LLMJudge(url="http://127.0.0.1:9/v1", model="m", cache=cache).score("q", "g", "p") == 1.0
    other = LLMJudge(url="http://127.0.0.2:9/v1", model="m", cache=cache, retries=1, timeout=1)
    from pastkit.judges import JudgeError
    with pytest.raises(JudgeError, match="unreachable"):  # asked, not answered from the first one's verdicts
        other.score("q", "g", "p")


def test_a_misspelt_notebook_parameter_is_refused_before_any_work():

    history = ["import pastkit", 'profile = "cpu"\nrl_prompts = 24\n', "# Parameters\nn_sorce = 3\nrounds = 1\n"]
    with pytest.raises(ValueError, match="'n_sorce' is declared by no notebook; did you mean 'n_source'"):
        collect("02_squad", {"In": history, "rounds": 1, "n_sorce": 3})
    assert collect("02_squad", {"In": history[:2] + ["# Parameters\nrounds = 1\n"], "rounds": 1}).rounds == 1
    # a key another notebook declares passes, as with `-f params/smoke.yaml` (LooGLE's excerpt_words in 02)
    shared = history[:2] + ["# Parameters\nrounds = 1\nexcerpt_words = 50\n"]
    assert collect("02_squad", {"In": shared, "rounds": 1, "excerpt_words": 50}).rounds == 1


@pytest.mark.skipif(os.name != "posix", reason="Unix sockets")
def test_a_notebooks_kernel_listens_on_no_tcp_port(tmp_path, capfd):
    import nbformat

    from pastkit.driver import execute

    cell = ("import json; from ipykernel.connect import get_connection_info\n"
            "print(json.loads(get_connection_info())['transport'])")
    kernel = {"name": "python3", "language": "python", "display_name": "Python 3"}
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(cell)], metadata={"kernelspec": kernel})
    nbformat.write(nb, tmp_path / "in.ipynb")
    execute(tmp_path / "in.ipynb", tmp_path / "out.ipynb", {})
    assert nbformat.read(tmp_path / "out.ipynb", 4).cells[0].outputs[0]["text"].strip() == "ipc"
    assert "TCP" not in capfd.readouterr().err


# ---- tracebacks instead of messages -------------------------------------------------------------------------

def test_an_architectures_field_that_is_not_a_list_is_named(trio, tmp_path, capsys):
    sft_dir, rl_dir, *_ = trio
    cfg = json.loads((rl_dir / "config.json").read_text())
    (rl_dir / "config.json").write_text(json.dumps({**cfg, "architectures": 5}))
    assert main(["vector", "extract", "--rl", str(rl_dir), "--sft", str(sft_dir), "-o", str(tmp_path / "v")]) == 2
    assert "config.json: 'architectures' must be a list of class names, got 5" in capsys.readouterr().err


def _adapter(path, config: dict, a_rank: int = 2, b_rank: int = 2):
    path.mkdir()
    (path / "adapter_config.json").write_text(json.dumps({"peft_type": "LORA", "r": 2, "lora_alpha": 4, **config}))
    m = "base_model.model.model.layers.0.self_attn.q_proj"
    save_file({f"{m}.lora_A.weight": torch.ones(a_rank, 16), f"{m}.lora_B.weight": torch.ones(16, b_rank)},
              path / "adapter_model.safetensors")
    return path


def test_a_rank_pattern_that_is_not_a_regex_is_named(tmp_path):
    from pastkit.checkpoint import LoraAdapter
    with pytest.raises(CheckpointError, match=r"adapter_config.json: rank_pattern key '\(q_proj' is not a valid"):
        LoraAdapter(_adapter(tmp_path / "a", {"rank_pattern": {"(q_proj": 4}}))


def test_lora_factors_of_different_ranks_are_named(tmp_path):
    from pastkit.checkpoint import LoraAdapter
    with pytest.raises(CheckpointError, match="adapter_model.safetensors: the LoRA factors of .*q_proj do not fit"):
        LoraAdapter(_adapter(tmp_path / "a", {}, a_rank=2, b_rank=3))


def test_a_lambda_beyond_float32_names_lambda(trio, tmp_path, capsys):
    sft_dir, _, target_dir, sft, *_ = trio
    rl_dir = save_ckpt(tmp_path / "far", {k: t + 5 for k, t in sft.items()})  # v = 5 everywhere: 3e38·5 overflows
    v = tmp_path / "v.safetensors"
    assert main(["vector", "extract", "--rl", str(rl_dir), "--sft", str(sft_dir), "-o", str(v)]) == 0
    assert main(["vector", "inject", "--model", str(target_dir), "--vector", str(v), "--lam", "1e39",
                 "-o", str(tmp_path / "o")]) == 2
    assert "lam = 1e+39 is outside float32's range" in capsys.readouterr().err
    assert main(["vector", "inject", "--model", str(target_dir), "--vector", str(v), "--lam", "3e38",
                 "-o", str(tmp_path / "o")]) == 2
    assert re.search(r"tensor '.*': θ \+ λ·v with λ = 3e\+38 is not finite", capsys.readouterr().err)
    assert not (tmp_path / "o").exists()


def test_a_nan_in_a_cosine_input_names_the_file(tmp_path, capsys):
    base = llama_like(1)
    bad = {k: t + 0.1 for k, t in base.items()}
    bad["model.layers.1.mlp.up_proj.weight"][0, 0] = float("nan")
    save_ckpt(tmp_path / "base", base)
    save_ckpt(tmp_path / "bad", bad, shards=2)
    save_ckpt(tmp_path / "good", {k: t - 0.1 for k, t in base.items()})
    assert main(["cosine", str(tmp_path / "bad"), str(tmp_path / "good"), "--base", str(tmp_path / "base"),
                 "-o", str(tmp_path / "c.csv")]) == 2
    err = capsys.readouterr().err
    assert re.search(r"bad/model-0000\d-of-00002.safetensors: tensor 'model.layers.1.mlp.up_proj.weight' has 1 "
                     r"non-finite", err) and "object at" not in err and "Checkpoint(" not in err


class _Html:
    """An endpoint that answers HTTP 200 with an HTML page, with a JSON or an HTML content type."""

    def __init__(self, content_type):
        import http.server
        import threading

        class Handler(http.server.BaseHTTPRequestHandler):
            calls = 0

            def do_POST(self):
                self.rfile.read(int(self.headers["Content-Length"]))
                type(self).calls += 1
                self.send_response(200)
                self.send_header("Content-Type", content_type)
                self.end_headers()
                self.wfile.write(b"<html><body>Sign in to continue</body></html>")

            def log_message(self, *args):
                pass

        self.handler = Handler
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}/v1"


@pytest.mark.parametrize("content_type", ["application/json", "text/html"])
def test_an_endpoint_answering_html_is_retried_then_named(content_type, tmp_path, monkeypatch):
    from pastkit.judges import JudgeError, LLMJudge

    monkeypatch.setattr("pastkit.judges.time.sleep", lambda s: None)
    html = _Html(content_type)
    try:
        j = LLMJudge(url=html.url, model="m", cache=tmp_path / "c.jsonl", retries=3, timeout=10)
        with pytest.raises(JudgeError, match=f"{re.escape(html.url)} gave no usable reply after 3 tries.*HTTP 200"):
            j.score("q", "g", "p")
        assert html.handler.calls == 3
    finally:
        html.server.shutdown()


def test_an_endpoint_answering_html_is_a_message_on_the_command_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr("pastkit.judges.time.sleep", lambda s: None)
    html = _Html("application/json")
    monkeypatch.setenv("PASTKIT_JUDGE_URL", html.url)
    monkeypatch.setenv("PASTKIT_JUDGE_MODEL", "m")
    monkeypatch.setenv("PASTKIT_JUDGE_TIMEOUT", "3")
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    from pastkit.benchmarks.toolbench.agent import CachedEndpoint
    from pastkit.judges import make_judge
    try:
        with pytest.raises(RuntimeError, match="gave no usable reply"):
            make_judge("llm").score("q", "g", "p")
        with pytest.raises(RuntimeError, match="gave no usable reply"):
            CachedEndpoint("simulator").ask("system", "user", 8)
    finally:
        html.server.shutdown()


@pytest.mark.parametrize("value", ["abc", "-1", "nan", "inf"])
def test_a_bad_judge_timeout_is_named(value, monkeypatch):
    from pastkit.judges import JudgeError, LLMJudge
    monkeypatch.setenv("PASTKIT_JUDGE_TIMEOUT", value)
    with pytest.raises(JudgeError, match=f"PASTKIT_JUDGE_TIMEOUT='{value}': must be a positive number"):
        LLMJudge(url="http://127.0.0.1:9/v1", model="m")


def test_a_file_size_limit_during_a_stage_is_a_message(tmp_path, monkeypatch):
    from pastkit.stages import StageError, run_stage

    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)

    def build(d):
        save_file({"w": torch.zeros(1 << 18)}, d / "model.safetensors")  # 1 MB, past the limit below

    resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 19, hard))  # Python ignores SIGXFSZ: writes fail with EFBIG
    try:
        with pytest.raises(StageError, match=r"file-size limit \(`ulimit -f` is 524288 bytes\)") as e:
            run_stage("big", {}, build, **QUIET)
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    assert e.value.__cause__ is not None and not list(tmp_path.glob("big-*"))


def test_two_kit_processes_build_their_stages_in_turn_not_side_by_side(tmp_path):
    """Each build waits up to 1.5 s to see the other process inside its own build: with the compute lock it
    never does (two processes computing at once on these cores ran more than 3x slower than one after the other)."""
    script = ("import sys, time; from pathlib import Path; from pastkit.stages import run_stage\n"
              "me, other = Path(sys.argv[1]), Path(sys.argv[2])\n"
              "def build(d):\n"
              "    me.touch(); t = time.time()\n"
              "    while not other.exists() and time.time() - t < float(sys.argv[4]): time.sleep(0.02)\n"
              "    (d / 'saw').write_text(str(other.exists())); me.unlink()\n"
              "print(open(run_stage(sys.argv[3], {}, build, log=lambda *_: None).path / 'saw').read())\n")
    env = {**os.environ, "PASTKIT_RUNS": str(tmp_path / "runs"), "PASTKIT_COMPUTE_LOCK": str(tmp_path / "cpu.lock")}
    a, b = tmp_path / "a-building", tmp_path / "b-building"
    procs = [subprocess.Popen([sys.executable, "-c", script, str(x), str(y), name, "1.5"], env=env,
                              stdout=subprocess.PIPE, text=True) for x, y, name in ((a, b, "first"), (b, a, "second"))]
    assert [p.communicate(timeout=60)[0].strip() for p in procs] == ["False", "False"]
    env["PASTKIT_COMPUTE_LOCK"] = "off"  # the control: without the lock they do overlap
    procs = [subprocess.Popen([sys.executable, "-c", script, str(x), str(y), name, "8"], env=env,
                              stdout=subprocess.PIPE, text=True) for x, y, name in ((a, b, "third"), (b, a, "fourth"))]
    assert "True" in [p.communicate(timeout=60)[0].strip() for p in procs]
