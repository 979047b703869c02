"""Regenerate every figure and table of a params profile: each notebook, in order, through papermill.

Executed copies go to executed/<profile>/ (ignored by git); the committed notebooks stay output-free.
A profile key that no notebook declares in its `parameters` cell is refused, and every notebook's
parameters and input files are validated, before anything runs. Only the reference run (`--reference`,
the cpu profile; `make figures`) writes into figures/; any other run writes to its own results folder.
"""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

from .ablations import SquadAblationParams
from .benchmarks.loogle import LoogleParams
from .benchmarks.squad import SquadParams
from .benchmarks.toolbench import ToolbenchParams
from .config import load_profile
from .report import FIGURES, REFERENCE_RUN, ROOT, results_folder

# The notebooks in order, each with the parameters class its `parameters` cell declares.
NOTEBOOKS = {"01_orthogonality": SquadParams, "02_squad": SquadParams, "03_loogle": LoogleParams,
             "04_toolbench": ToolbenchParams, "05_ablations": SquadAblationParams}
REFERENCE_PROFILE = "cpu"


def notebook_path(name: str) -> Path:
    return ROOT / "notebooks" / f"{name}.ipynb"


def declared_parameters(name: str) -> set[str]:
    import papermill as pm
    return set(pm.inspect_notebook(str(notebook_path(name))))


def run_profile(profile: str, only: list[str] | None = None, out_dir: Path | None = None,
                reference: bool = False, log=print) -> list[Path]:
    """Execute the notebooks (all, or `only`) with the profile's parameters; return the executed copies."""
    values = load_profile(profile)
    label = values.get("profile", Path(profile).stem)
    if reference:
        if Path(profile).stem != REFERENCE_PROFILE or label != REFERENCE_PROFILE:
            raise ValueError(f"the reference results in figures/ come from the {REFERENCE_PROFILE!r} profile only")
        values = {**values, "results_dir": str(FIGURES.relative_to(ROOT))}
    values.setdefault("profile", label)
    names = only or list(NOTEBOOKS)
    unknown = sorted(set(names) - set(NOTEBOOKS))
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; known: {list(NOTEBOOKS)}")
    declared = {n: declared_parameters(n) for n in NOTEBOOKS}
    stray = sorted(set(values) - set().union(*declared.values()))
    if stray:
        raise ValueError(f"profile {profile!r} sets {stray}, which no notebook declares")
    params = {n: {k: v for k, v in values.items() if k in declared[n]} for n in names}
    with _reference(reference):
        for n in names:  # a bad value or input file stops the run before any notebook starts
            checked = NOTEBOOKS[n](**params[n])
            checked.check_inputs()
            results_folder(checked)
        return _execute(names, params, label, Path(out_dir or ROOT / "executed" / label), log)


@contextlib.contextmanager
def _reference(reference: bool):
    """Tell the notebooks (their kernels inherit the environment) whether this is the reference run."""
    before = os.environ.pop(REFERENCE_RUN, None)
    if reference:
        os.environ[REFERENCE_RUN] = "1"
    try:
        yield
    finally:
        os.environ.pop(REFERENCE_RUN, None)
        if before is not None:
            os.environ[REFERENCE_RUN] = before


def _execute(names: list[str], params: dict, label: str, out_dir: Path, log) -> list[Path]:
    import papermill as pm

    out_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for name in names:
        t0 = time.time()
        where = results_folder(NOTEBOOKS[name](**params[name]))
        log(f"== {name} ({label} profile) -> results in {where}")
        out = out_dir / f"{name}.ipynb"
        try:
            pm.execute_notebook(str(notebook_path(name)), str(out), cwd=str(ROOT / "notebooks"),
                                parameters=params[name], log_output=True, progress_bar=False)
        except pm.PapermillExecutionError as e:
            raise RuntimeError(f"{name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                               f"(the executed notebook, with the traceback, is {out})") from None
        log(f"== {name} done in {time.time() - t0:.0f} s -> {out}")
        done.append(out)
    return done
