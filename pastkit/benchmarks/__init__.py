"""The benchmarks PaST runs on, by name. A benchmark is one file implementing what the engine asks
(`source_rounds`, `target_units`, `sft_phases`, `rl_task`, `scoring`, `score`; see `pastkit.past`) plus
its typed parameters; optionally `validation` (documents on which RL checkpoints are chosen, `Engine.select`)
and `judge_prompt` (the LLM judge's prompt for its answers)."""

from __future__ import annotations

from .loogle import Loogle
from .squad import Squad
from .toolbench import Toolbench

BENCHMARKS = {"squad": Squad(), "loogle": Loogle(), "toolbench": Toolbench()}


def get_benchmark(name: str):
    if name not in BENCHMARKS:
        raise ValueError(f"unknown benchmark {name!r}; known: {sorted(BENCHMARKS)}")
    return BENCHMARKS[name]
