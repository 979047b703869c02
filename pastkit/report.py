"""Where results go, and what they carry: every figure and table is written here, with provenance.

The committed reference results in figures/ are written only by the reference run (`make figures`, which runs
the cpu profile with `results_dir` set to figures/ and tells its notebooks so through $PASTKIT_REFERENCE_RUN); a
`results_dir` inside figures/ is refused anywhere else, before the first stage. Every other run (papermill with
overrides, a custom profile, JupyterLab) writes to results/<profile>-<hash of its parameters>/, so two runs with
different parameters never overwrite each other, and says where. Each file gets a `<name>.provenance.json` record
(profile, model, every parameter, seeds, flags, commit, pastkit version, the machine, the machines that built the
stages it used, checksum); writes are atomic.
$PASTKIT_RESULTS and $PASTKIT_RUNS move the results and stage folders (tests use them).
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import time
import warnings
from importlib import metadata
from pathlib import Path

from . import __version__
from .outputs import atomic_output

ROOT = Path(__file__).resolve().parent.parent
FIGURES = ROOT / "figures"
REFERENCE_RUN = "PASTKIT_REFERENCE_RUN"  # set by `pastkit run --reference` for the notebooks it executes


def results_folder(params) -> Path:
    """This configuration's results folder: `params.results_dir` if set (relative to the repository), else
    results/<profile>-<hash>. figures/ (or a folder inside it) only in the reference run: anywhere else it would
    replace the committed reference results with another configuration's."""
    if params.results_dir:
        path = Path(params.results_dir).expanduser()
        path = path if path.is_absolute() else ROOT / path
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
        # figures/ is left out: a reference run rewrites it, and that must not mark its own source as edited
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--untracked-files=no", "--", ".",
                                f":(exclude){FIGURES.name}"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return out.stdout.strip() + ("+dirty" if dirty else "") if out.returncode == 0 else None
    except (OSError, subprocess.TimeoutExpired):
        return None


CPU_ID_FIELDS = ("vendor_id", "cpu family", "model", "stepping")  # /proc/cpuinfo keys, in `cpu_id`'s order


@functools.cache
def machine(cpuinfo: Path = Path("/proc/cpuinfo")) -> dict:
    """The CPU and library versions a result was computed on.

    The same code, data and seed give different numbers on different hardware: bf16 kernels round differently
    with and without AMX (LooGLE's Table 2 moved by four points between two such CPUs), so a result says where it
    was made. `bf16` lists the CPU's bf16 instructions, `cpu_id` its vendor, family, model and stepping, because a
    virtual machine's model name can be as vague as "AMD EPYC" for several generations (Linux only; empty where
    unknown).
    """
    cpu, flags, ident = platform.processor() or platform.machine(), set(), {}
    try:
        for line in cpuinfo.read_text().splitlines():
            key, _, value = line.partition(":")
            key = key.strip()
            if key == "model name":
                cpu = value.strip()
            elif key in CPU_ID_FIELDS:
                ident[key] = value.strip()
            elif key == "flags":
                flags = set(value.split())
                break
    except OSError:
        pass
    cpu_id = " ".join(ident[k] if k == "vendor_id" else f"{k} {ident[k]}" for k in CPU_ID_FIELDS if k in ident)
    versions = {}
    for package in ("torch", "transformers", "trl", "peft"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    return {"cpu": cpu, "cpu_id": cpu_id, "cores": os.cpu_count(), "bf16": sorted(flags & {"amx_bf16", "avx512_bf16"}),
            "python": platform.python_version(), **versions}


def provenance(params, notebook: str, **extra) -> dict:
    """What a result carries: the parameters, the commit, the machine it was made on, and the machines that built
    the stages its process used (`stages.machines_used`; a stage cache may come from another machine)."""
    from .stages import machines_used  # stages imports this module

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
