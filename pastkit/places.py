"""Where things are: the repository, the committed reference results, a configuration's results folder, the stage
cache, and the commit a result came from.

The committed reference results in figures/ are written only by the reference run (`make figures`, which runs
the cpu profile with `results_dir` set to figures/ and tells its notebooks so through $PASTKIT_REFERENCE_RUN); a
`results_dir` inside figures/ is refused anywhere else, before the first stage. Every other run writes to
results/<profile>-<hash of its parameters>/, so two runs with different parameters never overwrite each other.
$PASTKIT_RESULTS and $PASTKIT_RUNS move the results and stage folders (tests use them).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "figures"
PAGES = ROOT / "docs" / "results"  # the results pages a reference run writes from figures/
REFERENCE_RUN = "PASTKIT_REFERENCE_RUN"  # set by `pastkit run --reference` for the notebooks it executes


def in_repo(path: str | Path) -> Path:
    """A user-given path: `~` expanded, and a relative one taken from the repository (where notebooks and
    profiles name their folders from), not from the current directory."""
    path = Path(path).expanduser()
    return path if path.is_absolute() else ROOT / path


def results_folder(params) -> Path:
    """This configuration's results folder: `params.results_dir` if set (relative to the repository), else
    results/<profile>-<hash>. figures/ (or a folder inside it) only in the reference run: anywhere else it would
    replace the committed reference results with another configuration's."""
    if params.results_dir:
        path = in_repo(params.results_dir)
        figures, resolved = FIGURES.resolve(), path.resolve()
        if (resolved == figures or figures in resolved.parents) and os.environ.get(REFERENCE_RUN) != "1":
            raise ValueError(f"results_dir={params.results_dir!r} is the committed reference results folder "
                             f"{FIGURES}; only the reference run writes there (`make figures`, i.e. `pastkit run "
                             "--profile cpu --reference`). Leave results_dir empty or name another folder")
        return path
    return Path(os.environ.get("PASTKIT_RESULTS", ROOT / "results")) / f"{params.profile}-{params.digest()}"


def runs_dir() -> Path:
    return Path(os.environ.get("PASTKIT_RUNS", ROOT / "runs"))


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        # figures/ and the results pages are left out: a reference run rewrites them, and its first notebook's
        # results must not mark the source of the notebooks after it as edited
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                f":(exclude){FIGURES.relative_to(ROOT)}", f":(exclude){PAGES.relative_to(ROOT)}"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None
