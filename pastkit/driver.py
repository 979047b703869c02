"""Regenerate every figure and table of a params profile: each notebook, in order, through papermill.

Executed copies go to executed/<profile>/ (ignored by git); the committed notebooks stay output-free.
A profile key that no notebook declares in its `parameters` cell is refused before anything runs.
"""

from __future__ import annotations

import time
from pathlib import Path

from .config import SquadParams, load_profile
from .report import ROOT

NOTEBOOKS = ["01_orthogonality", "02_squad"]


def notebook_path(name: str) -> Path:
    return ROOT / "notebooks" / f"{name}.ipynb"


def declared_parameters(name: str) -> set[str]:
    import papermill as pm
    return set(pm.inspect_notebook(str(notebook_path(name))))


def run_profile(profile: str, only: list[str] | None = None, out_dir: Path | None = None) -> list[Path]:
    """Execute the notebooks (all, or `only`) with the profile's parameters; return the executed copies."""
    import papermill as pm

    values = load_profile(profile)
    names = only or NOTEBOOKS
    unknown = sorted(set(names) - set(NOTEBOOKS))
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; known: {NOTEBOOKS}")
    declared = {n: declared_parameters(n) for n in NOTEBOOKS}
    stray = sorted(set(values) - set().union(*declared.values()))
    if stray:
        raise ValueError(f"profile {profile!r} sets {stray}, which no notebook declares")
    SquadParams(**values).check_inputs()  # a bad value or input file stops the run before any notebook starts
    label = values.get("profile", Path(profile).stem)
    out_dir = Path(out_dir or ROOT / "executed" / label)
    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for name in names:
        t0 = time.time()
        print(f"== {name} ({label} profile)", flush=True)
        out = out_dir / f"{name}.ipynb"
        pm.execute_notebook(str(notebook_path(name)), str(out), cwd=str(ROOT / "notebooks"),
                            parameters={k: v for k, v in values.items() if k in declared[name]},
                            log_output=True, progress_bar=False)
        print(f"== {name} done in {time.time() - t0:.0f} s -> {out}", flush=True)
        done.append(out)
    return done
