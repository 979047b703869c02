"""Regenerate every figure and table of a params profile: each notebook, in order, through papermill.

Executed copies go to executed/<profile>/ (ignored by git); the committed notebooks stay output-free.
A profile key that no notebook declares in its `parameters` cell is refused, and every notebook's
parameters and input files are validated, before anything runs. Only the reference run (`--reference`,
the cpu profile; `make figures`) writes into figures/; any other run writes to its own results folder.
"""

from __future__ import annotations

import contextlib
import difflib
import os
import time
from pathlib import Path

from .ablations import SquadAblationParams
from .benchmarks.loogle import LoogleParams
from .benchmarks.squad import OrthogonalityParams, SquadParams
from .benchmarks.toolbench import ToolbenchParams
from .config import injected_names, load_profile, parameters_cell
from .console import say
from .places import FIGURES, REFERENCE_RUN, ROOT, results_folder

# The notebooks in order, each with the parameters class its `parameters` cell declares.
NOTEBOOKS = {"01_orthogonality": OrthogonalityParams, "02_squad": SquadParams, "03_loogle": LoogleParams,
             "04_toolbench": ToolbenchParams, "05_ablations": SquadAblationParams}
REFERENCE_PROFILE = "cpu"


def collect(notebook: str, namespace: dict):
    """The notebook's parameters from its globals (the parameters cell plus papermill's injected values), with
    the input files and the results folder checked, so a bad value or file stops the notebook before its first
    stage.

    A value papermill injected for a name that no notebook declares (`-p n_sorce 3`) is refused here, as
    `pastkit run` refuses it: papermill itself only logs it and runs on with the default. A name another
    notebook declares passes (a profile serves every notebook: `-f params/smoke.yaml`)."""
    cls = NOTEBOOKS[notebook]
    known = set().union(*(c.names() for c in NOTEBOOKS.values()))
    for name in injected_names(namespace):
        if name not in known:
            near = difflib.get_close_matches(name, sorted(cls.names()), n=1) or \
                difflib.get_close_matches(name, sorted(known), n=1)
            raise ValueError(f"parameter {name!r} is declared by no notebook"
                             f"{f'; did you mean {near[0]!r}?' if near else ''} (this notebook's parameters: "
                             f"{', '.join(sorted(cls.names()))})")
    params = cls(**{name: namespace[name] for name in cls.names() if name in namespace})
    params.check_inputs()
    results_folder(params)
    return params


def notebook_path(name: str) -> Path:
    return ROOT / "notebooks" / f"{name}.ipynb"


def declared_parameters(name: str) -> set[str]:
    import papermill as pm
    return set(pm.inspect_notebook(str(notebook_path(name))))


def run_profile(profile: str, only: list[str] | None = None, out_dir: Path | None = None,
                reference: bool = False, log=say, overrides: dict | None = None) -> list[Path]:
    """Execute the notebooks (all, or `only`) with the profile's parameters, and `overrides` over them (`pastkit run
    -p rounds 1`); return the executed copies. The reference run takes no overrides: figures/ holds the cpu
    profile as it is, and after each of its notebooks the notebook's results page is regenerated (`pages`)."""
    values = {**load_profile(profile), **(overrides or {})}
    label = values.get("profile", Path(profile).stem)
    if reference:
        if Path(profile).stem != REFERENCE_PROFILE or label != REFERENCE_PROFILE or overrides:
            raise ValueError(f"the reference results in figures/ come from the {REFERENCE_PROFILE!r} profile only, "
                             "without overrides")
        values = {**values, "results_dir": str(FIGURES.relative_to(ROOT))}
    values.setdefault("profile", label)
    names = only or list(NOTEBOOKS)
    unknown = sorted(set(names) - set(NOTEBOOKS))
    if unknown:
        raise ValueError(f"unknown notebook(s) {unknown}; known: {list(NOTEBOOKS)}")
    declared = {n: declared_parameters(n) for n in NOTEBOOKS}
    stray = sorted(set(values) - set().union(*declared.values()))
    if stray:
        raise ValueError(f"profile {profile!r} (with its overrides) sets {stray}, which no notebook declares")
    params = {n: {k: v for k, v in values.items() if k in declared[n]} for n in names}
    with _reference(reference):
        for n in names:  # a bad value or input file stops the run before any notebook starts
            checked = NOTEBOOKS[n](**params[n])
            checked.check_inputs()
            results_folder(checked)
        return _execute(names, params, label, Path(out_dir or ROOT / "executed" / label), reference, log)


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


def execute(notebook: Path, out: Path, parameters: dict) -> None:
    """Run one notebook with papermill from notebooks/. Where the OS has Unix sockets the kernel talks to
    papermill over them rather than over localhost TCP ports, which any local user could connect to (and
    which make ipykernel warn on every run that the traffic is plain text)."""
    import papermill as pm
    from traitlets.config import Config

    config = Config()
    if os.name == "posix":
        config.KernelManager.transport = "ipc"
    pm.execute_notebook(str(notebook), str(out), cwd=str(ROOT / "notebooks"), parameters=parameters,
                        progress_bar=False, config=config)


def _execute(names: list[str], params: dict, label: str, out_dir: Path, reference: bool, log) -> list[Path]:
    """Run each notebook; the kit's progress reaches the console from the kernel itself (`console.say`), so the
    cells' other output stays in the executed copy. Ends with one summary: each notebook's time, where its results
    went, and the flags its results carry, once each."""
    import papermill as pm

    from .pages import flags, records, write_page

    out_dir.mkdir(parents=True, exist_ok=True)
    done, summary = [], []
    for name in names:
        t0 = time.time()
        where = results_folder(NOTEBOOKS[name](**params[name]))
        log(f"== {name} ({label} profile) -> results in {where}")
        out = out_dir / f"{name}.ipynb"
        try:
            execute(notebook_path(name), out, params[name])
        except pm.PapermillExecutionError as e:
            raise RuntimeError(f"{name} failed in cell {e.exec_count}: {e.ename}: {e.evalue} "
                               f"(the executed notebook, with the traceback, is {out})") from None
        seconds = time.time() - t0
        page = write_page(where, name) if reference else None
        log(f"== {name} done in {seconds:.0f} s -> {out}")
        summary.append((name, seconds, where, page, flags(records(where, name))))
        done.append(out)
    log("\n== summary")
    for name, seconds, where, page, said in summary:
        log(f"{name}: {seconds / 60:.1f} min · results {where}" + (f" · page {page}" if page else "") +
            f" · executed {out_dir / f'{name}.ipynb'}")
        for flag in said:
            log(f"   ⚠ {flag}")
    return done


def write_parameter_cells() -> list[str]:
    """Rewrite each notebook's `parameters` cell from its parameters class (`config.parameters_cell`); returns
    the notebooks whose cell changed. Only that cell is touched, so a notebook's outputs (none are committed)
    and other cells stay as they are."""
    import nbformat

    changed = []
    for name, cls in NOTEBOOKS.items():
        path = notebook_path(name)
        nb = nbformat.read(path, as_version=4)
        cell = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
        if cell.source != parameters_cell(cls):
            cell.source = parameters_cell(cls)
            nbformat.write(nb, path)
            changed.append(name)
    return changed


if __name__ == "__main__":
    import sys

    if sys.argv[1:] != ["--write-parameters"]:
        raise SystemExit("usage: python -m pastkit.driver --write-parameters")
    print("rewrote the parameters cell of", ", ".join(write_parameter_cells()) or "no notebook")
