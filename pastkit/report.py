"""What results carry: every figure and table is written here, into its configuration's results folder
(`places.results_folder`), with a `<name>.provenance.json` record (profile, model, every parameter, seeds, flags,
commit, pastkit version, the machine, the machines that built the stages it used, checksum); writes are atomic.
"""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

from . import __version__
from .machine import machine
from .outputs import atomic_output
from .places import git_commit, results_folder
from .stages import machines_used


def provenance(params, notebook: str, **extra) -> dict:
    """What a result carries: the parameters, the commit, the machine it was made on, and the machines that built
    the stages its process used (`stages.machines_used`; a stage cache may come from another machine)."""
    p = params.as_dict()
    return {"notebook": notebook, "profile": p.get("profile"), "model": p.get("model"), "seeds": p.get("seeds"),
            "lam": p.get("lam"), "rounds": p.get("rounds"), "judge": p.get("judge"), "params": p,
            "commit": git_commit(), "pastkit_version": __version__, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "machine": machine(), "stages_built_on": machines_used(), **extra}


def save_figure(fig, name: str, params, notebook: str, caption: str | None = None, **extra) -> Path:
    """Save a matplotlib figure as <results>/<name>.png, captioned with what produced it (unless its suptitle
    already says it), with provenance. `caption` names what produced the figure when that is not `params` itself
    (05's controls run on other seeds than the notebook's); the figure still goes to `params`' results folder."""
    caption = caption or params.caption()
    if caption not in fig.get_suptitle():  # the caption once, even if the plot's suptitle carries it
        fig.text(0.0, -0.01, caption, fontsize=7, color="#555555", va="top", transform=fig.transFigure)
    path = results_folder(params) / f"{name}.png"
    with atomic_output(path, force=True, provenance=provenance(params, notebook, **extra)) as tmp:
        fig.savefig(tmp, dpi=150, bbox_inches="tight", format="png")
    return path


def save_table(df, name: str, params, notebook: str, markdown: str | None = None, **extra) -> Path:
    """Save a DataFrame as <results>/<name>.csv (and a Markdown rendering, if given) with provenance."""
    prov = provenance(params, notebook, **extra)
    path = results_folder(params) / f"{name}.csv"
    with atomic_output(path, force=True, provenance=prov) as tmp:
        df.to_csv(tmp, index=False)
    if markdown is not None:
        with atomic_output(path.with_suffix(".md"), force=True, provenance=prov) as tmp:
            tmp.write_text(markdown + "\n")
    return path


def save_text(text: str, name: str, params, notebook: str, **extra) -> Path:
    """Save prose a notebook derived from its results (its conclusion) as <results>/<name>.md with provenance,
    so the generated results page (`pages`) quotes it instead of anyone retyping its numbers."""
    path = results_folder(params) / f"{name}.md"
    with atomic_output(path, force=True, provenance=provenance(params, notebook, **extra)) as tmp:
        tmp.write_text(text.strip() + "\n")
    return path


def quiet_libraries() -> None:
    """Keep executed notebooks readable: no library progress bars or deprecation chatter in cell outputs.

    pastkit's own warnings (degenerate results) stay visible; only warnings raised inside the libraries
    below are silenced.
    """
    os.environ.setdefault("TRL_EXPERIMENTAL_SILENCE", "1")
    for module in ("transformers", "trl", "peft", "torch", "accelerate", "datasets", "seaborn", "matplotlib",
                   "huggingface_hub", "jupyter_client", "tqdm"):
        warnings.filterwarnings("ignore", module=module)
    import datasets
    import transformers
    transformers.logging.set_verbosity_error()
    transformers.utils.logging.disable_progress_bar()
    datasets.disable_progress_bars()
    datasets.logging.set_verbosity_error()
