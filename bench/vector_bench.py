"""Benchmark: θ_T + λ·(θ_rl − θ_sft) by pastkit, mergekit's task_arithmetic, and whole-state-dict addition.

Each method runs in its own subprocess on the same inputs, timed on the wall clock with its peak RSS from
wait4. The floor is a plain read of the three inputs plus a write of one output of the target's size.
Inputs stay in the page cache across runs (they fit in RAM), so every method sees the same warm cache.
Outputs are compared tensor by tensor against mergekit's. Results: bench/out/results.md (and .csv).

    .venv/bin/python bench/vector_bench.py [--cases synthetic smollm2] [--repeats 2]
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import torch

OUT = Path(__file__).parent / "out"
LAM = 1.0


def make_synthetic(root: Path) -> dict[str, Path]:
    """Three bf16 Llama checkpoints (1.16B params, 2.3 GB each, 5 shards): sft, rl = sft + δ, target."""
    from transformers import LlamaConfig

    cfg = LlamaConfig(vocab_size=32000, hidden_size=2048, intermediate_size=5632, num_hidden_layers=20,
                      num_attention_heads=16, num_key_value_heads=16, tie_word_embeddings=False,
                      torch_dtype="bfloat16", architectures=["LlamaForCausalLM"])
    names = {"model.embed_tokens.weight": (32000, 2048), "lm_head.weight": (32000, 2048),
             "model.norm.weight": (2048,)}
    for i in range(cfg.num_hidden_layers):
        p = f"model.layers.{i}."
        names.update({p + f"self_attn.{m}_proj.weight": (2048, 2048) for m in "qkvo"})
        names.update({p + "mlp.gate_proj.weight": (5632, 2048), p + "mlp.up_proj.weight": (5632, 2048),
                      p + "mlp.down_proj.weight": (2048, 5632), p + "input_layernorm.weight": (2048,),
                      p + "post_attention_layernorm.weight": (2048,)})
    paths = {}
    for role, seed in (("sft", 0), ("rl", 0), ("target", 1)):
        path = root / role
        paths[role] = path
        if (path / "config.json").exists():
            cfg.save_pretrained(path)
            continue
        g = torch.Generator().manual_seed(seed)
        noise = torch.Generator().manual_seed(99)
        tensors = {}
        for n, shape in names.items():
            t = torch.randn(*shape, generator=g) * 0.02
            if role == "rl":
                t += torch.randn(*shape, generator=noise) * 1e-3
            tensors[n] = t.to(torch.bfloat16)
        _save_sharded(path, tensors, shard_bytes=500 * 2**20)
        cfg.save_pretrained(path)
        del tensors
    return paths


def make_smollm2(root: Path) -> dict[str, Path]:
    """SmolLM2-135M (fp32, 540 MB) as sft; rl and target are it plus small random deltas."""
    from safetensors.torch import load_file

    from pastkit.models import materialize_smollm2

    src = materialize_smollm2()
    base = load_file(src / "model.safetensors")
    paths = {}
    for role, scale in (("sft", 0.0), ("rl", 1e-3), ("target", 2e-3)):
        path = root / role
        paths[role] = path
        if (path / "config.json").exists():
            continue
        g = torch.Generator().manual_seed(hash(role) % 2**31)
        tensors = {k: v + scale * torch.randn(v.shape, generator=g) for k, v in base.items()}
        _save_sharded(path, tensors, shard_bytes=2**40)
        for f in src.iterdir():
            if f.suffix != ".safetensors":
                shutil.copy2(f, path / f.name)
    return paths


def _save_sharded(path: Path, tensors: dict, shard_bytes: int) -> None:
    from safetensors.torch import save_file

    path.mkdir(parents=True, exist_ok=True)
    groups, cur, size = [], [], 0
    for n, t in tensors.items():
        if cur and size + t.nbytes > shard_bytes:
            groups.append(cur)
            cur, size = [], 0
        cur.append(n)
        size += t.nbytes
    groups.append(cur)
    if len(groups) == 1:
        save_file(tensors, path / "model.safetensors", {"format": "pt"})
        return
    wmap = {}
    for i, g in enumerate(groups):
        f = f"model-{i + 1:05d}-of-{len(groups):05d}.safetensors"
        save_file({n: tensors[n] for n in g}, path / f, {"format": "pt"})
        wmap.update({n: f for n in g})
    (path / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": wmap}))


def scripts(p: dict[str, Path], work: Path, out: Path) -> dict[str, list[list[str]]]:
    """The commands each method runs (a method may be several processes, run in sequence)."""
    py = sys.executable
    floor = textwrap.dedent(f"""
        import glob, os
        buf = bytearray(64 * 2**20)
        for d in {[str(p['rl']), str(p['sft']), str(p['target'])]!r}:
            for f in sorted(glob.glob(d + '/*.safetensors')):
                with open(f, 'rb', buffering=0) as fh:
                    while fh.readinto(buf):
                        pass
        os.makedirs({str(out)!r}, exist_ok=True)
        for f in sorted(glob.glob({str(p['target'])!r} + '/*.safetensors')):
            with open(f, 'rb', buffering=0) as fh, open({str(out)!r} + '/' + os.path.basename(f), 'wb') as o:
                while n := fh.readinto(buf):
                    o.write(memoryview(buf)[:n])
    """)
    naive = textwrap.dedent(f"""
        import glob, json, os, shutil
        from safetensors.torch import load_file, save_file
        def load(d):
            sd = {{}}
            for f in sorted(glob.glob(d + '/*.safetensors')):
                sd.update(load_file(f))
            return sd
        rl, sft, t = load({str(p['rl'])!r}), load({str(p['sft'])!r}), load({str(p['target'])!r})
        merged = {{k: (t[k].float() + {LAM} * (rl[k].float() - sft[k].float())).to(t[k].dtype) for k in t}}
        os.makedirs({str(out)!r}, exist_ok=True)
        save_file(merged, {str(out)!r} + '/model.safetensors', {{'format': 'pt'}})
        shutil.copy({str(p['target'])!r} + '/config.json', {str(out)!r})
    """)
    fused = textwrap.dedent(f"""
        from pastkit import SkillVector
        SkillVector.extract({str(p['rl'])!r}, {str(p['sft'])!r}).apply_to({str(p['target'])!r}, {str(out)!r},
                                                                           lam={LAM})
    """)
    cfg = work / "mergekit.yml"
    cfg.write_text(textwrap.dedent(f"""
        merge_method: task_arithmetic
        base_model: {p['sft']}
        models:
          - model: {p['rl']}
            parameters: {{weight: {LAM}}}
          - model: {p['target']}
            parameters: {{weight: 1.0}}
        parameters: {{normalize: false}}
        dtype: float32
        out_dtype: {_dtype_of(p['target'])}
    """))
    vec = str(work / "v.safetensors")
    pk = [str(Path(sys.executable).with_name("pastkit"))]
    return {
        "floor (read 3 inputs + write 1 output)": [[py, "-c", floor]],
        "pastkit extract (fp32 v) + inject": [
            pk + ["vector", "extract", "--rl", str(p["rl"]), "--sft", str(p["sft"]), "-o", vec, "--force"],
            pk + ["vector", "inject", "--model", str(p["target"]), "--vector", vec, "--lam", str(LAM), "-o", str(out)]],
        "pastkit extract (bf16 v) + inject": [
            pk + ["vector", "extract", "--rl", str(p["rl"]), "--sft", str(p["sft"]), "-o", vec, "--force",
                  "--dtype", "bfloat16"],
            pk + ["vector", "inject", "--model", str(p["target"]), "--vector", vec, "--lam", str(LAM), "-o", str(out)]],
        "pastkit lazy extract→apply (no v file)": [[py, "-c", fused]],
        "mergekit task_arithmetic": [[str(Path(sys.executable).with_name("mergekit-yaml")), str(cfg), str(out),
                                      "--quiet"]],
        "whole state dicts (authors' approach)": [[py, "-c", naive]],
    }


def _dtype_of(path: Path) -> str:
    from pastkit.checkpoint import Checkpoint
    ck = Checkpoint(path)
    return str(ck.dtype(ck.keys()[0])).removeprefix("torch.")


def run(cmds: list[list[str]]) -> tuple[float, float]:
    """Wall seconds and the largest peak RSS (MB) over the processes of one method.

    RSS comes from GNU time, not from wait4 here: Linux carries a process's high-water RSS across
    fork+exec, so a child of this (large) process would report at least this process's RSS.
    """
    t0, peak = time.perf_counter(), 0
    for cmd in cmds:
        proc = subprocess.run(["/usr/bin/time", "-f", "MAXRSS_KB=%M", *cmd], stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, text=True)
        if proc.returncode != 0:
            raise RuntimeError(f"{cmd[:3]} failed: {proc.stderr[-2000:]}")
        kb = [line for line in proc.stderr.splitlines() if line.startswith("MAXRSS_KB=")][-1]
        peak = max(peak, int(kb.split("=")[1]) / 1024)
    return time.perf_counter() - t0, peak


def max_abs_diff(a: Path, b: Path) -> float:
    from pastkit.checkpoint import Checkpoint
    x, y = Checkpoint(a), Checkpoint(b)
    worst = 0.0
    for k in x.keys():
        worst = max(worst, float((x.get(k).float() - y.get(k).float()).abs().max()))
    return worst


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", nargs="+", default=["synthetic", "smollm2"])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--work", default=str(OUT / "work"))
    args = ap.parse_args(argv)
    import pandas as pd

    from pastkit.checkpoint import Checkpoint

    rows = []
    for case in args.cases:
        work = Path(args.work) / case
        work.mkdir(parents=True, exist_ok=True)
        paths = (make_synthetic if case == "synthetic" else make_smollm2)(work)
        target = Checkpoint(paths["target"])
        size_gb = sum(i.end - i.start for i in target.tensors.values()) / 1e9
        largest_mb = max(i.end - i.start for i in target.tensors.values()) / 2**20
        shard_mb = max(f.stat().st_size for f in paths["target"].glob("*.safetensors")) / 2**20
        reference = work / "out-mergekit"
        for method, cmds in scripts(paths, work, work / "out").items():
            best = None
            for _ in range(args.repeats):
                shutil.rmtree(work / "out", ignore_errors=True)
                wall, rss = run(cmds)
                best = (wall, rss) if best is None or wall < best[0] else best
                print(f"{case:9s} {method:42s} {wall:7.1f} s  {rss:7.0f} MB", flush=True)
            if method.startswith("mergekit"):
                shutil.rmtree(reference, ignore_errors=True)
                shutil.move(work / "out", reference)
                diff = 0.0
            elif method.startswith("floor"):
                diff = float("nan")
            else:
                diff = None  # compared below, once mergekit's output exists
                shutil.move(work / "out", work / f"out-{len(rows)}")
            rows.append({"case": case, "model_GB": round(size_gb, 2), "largest_shard_MB": round(shard_mb),
                         "largest_tensor_MB": round(largest_mb), "method": method, "wall_s": round(best[0], 1),
                         "peak_rss_MB": round(best[1]), "max_abs_diff_vs_mergekit": diff})
        for i, r in enumerate(rows):
            if r["case"] == case and r["max_abs_diff_vs_mergekit"] is None:
                r["max_abs_diff_vs_mergekit"] = max_abs_diff(work / f"out-{i}", reference)
                shutil.rmtree(work / f"out-{i}")
        shutil.rmtree(reference)
    df = pd.DataFrame(rows)
    floor = df[df.method.str.startswith("floor")].set_index("case")["wall_s"]
    df["x_floor"] = [round(w / floor[c], 2) for c, w in zip(df.case, df.wall_s)]
    OUT.mkdir(exist_ok=True)
    df.to_csv(OUT / "results.csv", index=False)
    (OUT / "results.md").write_text(df.to_markdown(index=False) if _has_tabulate() else df.to_string(index=False))
    print(df.to_string(index=False))


def _has_tabulate() -> bool:
    try:
        import tabulate  # noqa: F401
        return True
    except ImportError:
        return False


if __name__ == "__main__":
    main()
