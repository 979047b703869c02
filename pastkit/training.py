"""What the two trainers share: where they run, how they keep memory, how they report progress, how their curves
are read.

CPU-only settings (use_cpu, no gradient checkpointing, fp32 unless `cpu_bf16`) apply only where no GPU is
present; on a GPU trl's own defaults stand (plus bf16 where supported). Progress is a few plain lines
("grpo step 16/64 · reward 0.12"), never a progress bar in a notebook (bars only on an interactive console), so
executed notebooks stay readable.
"""

from __future__ import annotations

import contextlib
import ctypes
import math
import sys
import time

import numpy as np
import torch

from .console import say


def interactive() -> bool:
    """Progress bars only where a person watches a terminal; notebooks and logs get plain lines."""
    return sys.stderr.isatty()


def device_args(cpu_bf16: bool = False) -> dict:
    """Trainer arguments for this machine: CPU settings on a CPU, trl's defaults (plus bf16) on a GPU.

    `cpu_bf16` turns on bf16 autocast on a CPU (accelerate's mixed precision): weights, gradients and the
    optimizer stay fp32, matrix products run in bf16. On a CPU with AMX this trained about 1.8x faster (README,
    Performance); every number it produces differs from an fp32 run's, so it is a parameter, recorded.
    """
    if torch.cuda.is_available():
        return {"bf16": torch.cuda.is_bf16_supported()}
    return {"use_cpu": True, "bf16": cpu_bf16, "gradient_checkpointing": False}


# glibc's mallopt parameters, and the values that keep a training step's memory: M_TRIM_THRESHOLD, M_TOP_PAD,
# M_MMAP_THRESHOLD. After training they go back to where glibc's own adjustment ends (a 32 MB mmap threshold, trim
# at twice that, the default 128 KB pad), since generation gains nothing from them.
_KEEP = {-1: 2**31 - 1, -2: 2**30, -3: 2**31 - 1}
_AFTER = {-1: 64 << 20, -2: 128 << 10, -3: 32 << 20}


def _glibc():
    """The C library, if it is glibc on Linux (mallopt and malloc_trim), else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        return libc if hasattr(libc, "mallopt") and hasattr(libc, "malloc_trim") else None
    except OSError:
        return None


def _memory_short() -> bool:
    """Whether the machine has less than a quarter of its memory available (Linux's MemAvailable)."""
    with open("/proc/meminfo") as f:
        kb = {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in f)}
    return kb["MemAvailable"] < kb["MemTotal"] / 4


def memory_callbacks() -> list:
    """Trainer callbacks that keep the memory a CPU training step frees for the next step, while memory lasts.

    A CPU training step allocates and frees activations and gradients of tens to hundreds of MB. glibc serves
    blocks that size with fresh mappings and unmaps them on free, and trims the heap's top as soon as it is free,
    so every step the kernel maps and zero-fills the same memory again (README, Performance: a fifth to two fifths
    of the time of SmolLM2's SFT stages). During training this raises glibc's thresholds so freed memory stays put;
    the arithmetic is untouched, so trained models are bit for bit the same. What is kept can fragment and grow when
    sequence lengths vary (ToolBench's SFT grew past 20 GB), so after any step that leaves the machine with less than
    a quarter of its memory available, and when training ends, free memory goes back to the OS (`malloc_trim`).
    None on a GPU (torch caches its memory there) or without glibc.
    """
    libc = None if torch.cuda.is_available() else _glibc()
    if libc is None:
        return []
    from transformers import TrainerCallback

    class KeepFreedMemory(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            for param, value in _KEEP.items():
                libc.mallopt(param, value)

        def on_step_end(self, args, state, control, **kw):
            if _memory_short():
                libc.malloc_trim(0)

        def on_train_end(self, args, state, control, **kw):
            for param, value in _AFTER.items():
                libc.mallopt(param, value)
            libc.malloc_trim(0)

    return [KeepFreedMemory()]


def autocast(cpu_bf16: bool):
    """The context generation runs in: bf16 autocast on a CPU when `cpu_bf16` (as training), else nothing."""
    if cpu_bf16 and not torch.cuda.is_available():
        return torch.autocast("cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def progress_callback(what: str, keys: tuple[str, ...], log=say):
    """A trainer callback printing ~10 lines per run: step, elapsed time and the named metrics."""
    from transformers import TrainerCallback

    class Progress(TrainerCallback):
        def on_train_begin(self, args, state, control, **kw):
            self.t0, self.every = time.time(), max(1, math.ceil(state.max_steps / 10))

        def on_log(self, args, state, control, logs=None, **kw):
            step = state.global_step
            if logs and (step % self.every == 0 or step == state.max_steps) and any(k in logs for k in keys):
                shown = " · ".join(f"{k} {logs[k]:.4g}" for k in keys if k in logs)
                log(f"  {what} step {step}/{state.max_steps} · {time.time() - self.t0:.0f} s · {shown}")

    return Progress()


def quiet_trainer(trainer) -> None:
    """Drop the Trainer's raw dict printing (it replaces the progress bar when bars are off); our callback reports."""
    from transformers.trainer_callback import PrinterCallback
    trainer.remove_callback(PrinterCallback)


def curve(log_history: list[dict], key: str) -> list[float]:
    return [float(e[key]) for e in log_history if key in e and e[key] is not None and math.isfinite(float(e[key]))]


def start_end(values: list[float]) -> dict:
    """Mean of the first and of the last quarter of a curve, each with a 95% bootstrap interval."""
    from .evaluation import bootstrap_interval

    q = max(1, len(values) // 4)
    first, last = bootstrap_interval(values[:q]), bootstrap_interval(values[-q:])
    return {"n": len(values), "start": first[0], "start_ci": [first[1], first[2]],
            "end": last[0], "end_ci": [last[1], last[2]]}


def falling(values: list[float]) -> bool:
    """Did a loss curve fall: is the last quarter's mean below the first quarter's?"""
    q = max(1, len(values) // 4)
    return len(values) >= 2 and float(np.mean(values[-q:])) < float(np.mean(values[:q]))
