"""What `training.memory_callbacks` saves: the kit's knowledge SFT with glibc's default malloc settings and with it.

    .venv/bin/python bench/malloc.py [--passages 16] [--repeats 2]

Every run is a fresh process, because malloc settings hold for a whole process and cannot be undone. Each run trains
SmolLM2-135M with `train_sft` for three epochs on SQuAD source passages (never the test split), batch 4, in fp32 and in
bf16 autocast, once with `memory_callbacks` switched off (glibc's defaults) and once on, alternating, so a drift of
the machine's speed falls on both. For each setting it reports the fastest run: wall seconds, user and system CPU
seconds and minor page faults of the training call (model loading and saving included), and the process's peak
resident memory, because keeping freed memory costs memory. It also says whether the two settings saved
byte-identical models (sha256): the setting may change the speed, never the result.
Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def child(malloc: str, precision: str, passages: int, out: Path) -> None:
    """One training run in this process; prints its measurements as one JSON line."""
    from pastkit import knowledge
    from pastkit.benchmarks.squad import cpt_documents, load_passages
    from pastkit.knowledge import SFTSpec, train_sft
    from pastkit.models import resolve

    if malloc == "default":
        knowledge.memory_callbacks = lambda: []  # train_sft looks the name up when it is called
    records = [{"text": t} for t in cpt_documents(load_passages("train_round1_50")[:passages], None)]
    spec = SFTSpec(epochs=3, lr=7e-5, batch=4, grad_accum=1, max_len=512, cpu_bf16=precision == "bf16")
    before, t0 = resource.getrusage(resource.RUSAGE_SELF), time.perf_counter()
    train_sft(resolve("smollm2-135m-instruct"), records, out, spec, seed=0, log=lambda *_: None)
    wall, after = time.perf_counter() - t0, resource.getrusage(resource.RUSAGE_SELF)
    print(json.dumps({"wall": wall, "user": after.ru_utime - before.ru_utime, "sys": after.ru_stime - before.ru_stime,
                      "faults": after.ru_minflt - before.ru_minflt, "peak_mb": after.ru_maxrss / 1024,
                      "sha256": hashlib.sha256((out / "model.safetensors").read_bytes()).hexdigest()}))


def run(malloc: str, precision: str, passages: int, work: Path) -> dict:
    out = work / f"{malloc}-{precision}-{time.time_ns()}"
    done = subprocess.run([sys.executable, __file__, "--child", malloc, precision, "--passages", str(passages),
                           "--out", str(out)], capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"the {malloc} {precision} run failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--passages", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--child", nargs=2, metavar=("MALLOC", "PRECISION"), help=argparse.SUPPRESS)
    ap.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        return child(*args.child, args.passages, args.out)
    print("| precision | malloc | wall s | user s | sys s | minor faults | peak RSS MB | same model bytes |")
    print("|---|---|---:|---:|---:|---:|---:|---|")
    with tempfile.TemporaryDirectory(prefix="pastkit-malloc-") as work:
        for precision in ("fp32", "bf16"):
            runs = {"default": [], "keep freed memory": []}
            for _ in range(args.repeats):
                for malloc in runs:
                    runs[malloc].append(run(malloc, precision, args.passages, Path(work)))
            same = len({r["sha256"] for rs in runs.values() for r in rs}) == 1
            for malloc, rs in runs.items():
                r = min(rs, key=lambda r: r["wall"])
                print(f"| {precision} | {malloc} | {r['wall']:.1f} | {r['user']:.1f} | {r['sys']:.1f} | "
                      f"{r['faults']:,} | {r['peak_mb']:,.0f} | {'yes' if same else 'NO'} |", flush=True)


if __name__ == "__main__":
    main()
