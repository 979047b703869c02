"""The benchmarks PaST runs on. Each keeps the engine's contract (`pastkit.past.Benchmark`: its methods, its
parameters class, the modules that key its stages); a new benchmark is a module like these, with a notebook whose
parameters class is registered in `pastkit.driver.NOTEBOOKS`."""

from __future__ import annotations

from .loogle import Loogle
from .squad import Squad
from .toolbench import Toolbench

__all__ = ["Loogle", "Squad", "Toolbench"]
