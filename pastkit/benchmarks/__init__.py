"""The benchmarks PaST runs on. Each keeps the engine's contract (`pastkit.past.Benchmark`: its methods, its
parameters class, the modules that key its stages); a new benchmark is a module like these, with a notebook whose
parameters class is registered in `pastkit.driver.NOTEBOOKS`. Its tables, plots and conclusions belong in a module
of their own (`table1`, `table2`, `toolbench.fig3`): a stage's key hashes the source of the modules that build it,
so an edit to a benchmark module re-runs its stages, and an edit to its tables only redraws them."""

from __future__ import annotations

from .loogle import Loogle
from .squad import Squad
from .toolbench import Toolbench

__all__ = ["Loogle", "Squad", "Toolbench"]
