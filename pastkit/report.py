"""Where results go, and what they carry: every figure and table is written here, with provenance.

Figures and tables land in figures/ for the cpu profile (the kit's main job) and figures/<profile>/ for
any other, each beside a `<name>.provenance.json` saying which profile, model, parameters, seeds, commit
and pastkit version made it. $PASTKIT_FIGURES and $PASTKIT_RUNS move the two folders (tests use them).
Writes are atomic: a crash never leaves half a PNG or CSV.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from . import __version__
from .outputs import atomic_output

ROOT = Path(__file__).resolve().parent.parent


def figures_dir(profile: str) -> Path:
    base = Path(os.environ.get("PASTKIT_FIGURES", ROOT / "figures"))
    return base if profile == "cpu" else base / profile


def runs_dir() -> Path:
    return Path(os.environ.get("PASTKIT_RUNS", ROOT / "runs"))


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True,
                             timeout=10)
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


def provenance(params, notebook: str, **extra) -> dict:
    p = params.as_dict()
    return {"notebook": notebook, "profile": p.get("profile"), "model": p.get("model"), "seeds": p.get("seeds"),
            "params": p, "commit": git_commit(), "pastkit_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"), **extra}


def save_figure(fig, name: str, params, notebook: str, **extra) -> Path:
    """Save a matplotlib figure as figures/<name>.png with its provenance record."""
    path = figures_dir(params.profile) / f"{name}.png"
    with atomic_output(path, force=True, provenance=provenance(params, notebook, **extra)) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format="png")
    return path


def save_table(df, name: str, params, notebook: str, markdown: str | None = None, **extra) -> Path:
    """Save a DataFrame as figures/<name>.csv (and a Markdown rendering, if given) with provenance."""
    path = figures_dir(params.profile) / f"{name}.csv"
    prov = provenance(params, notebook, **extra)
    with atomic_output(path, force=True, provenance=prov) as tmp:
        df.to_csv(tmp, index=False)
    if markdown is not None:
        with atomic_output(path.with_suffix(".md"), force=True, provenance=prov) as tmp:
            tmp.write_text(markdown + "\n")
    return path
