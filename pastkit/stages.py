"""Cached, resumable pipeline stages.

A stage's output lives in runs/<name>-<key>/, where key hashes everything it depends on: its own
parameters and the keys of the stages it consumes. A re-run with the same parameters finds the folder
and skips the work; a changed parameter changes the key of that stage and of everything downstream only.
A stage writes into a temporary folder that is renamed into place when it finishes, so an interrupted
run leaves no half-written stage and resumes from the last finished one.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .checkpoint import atomic_output
from .report import runs_dir

STAGE_FILE = "stage.json"


@dataclass(frozen=True)
class Stage:
    """A finished stage: its folder and its key (which downstream stages hash in)."""

    name: str
    key: str
    path: Path

    def __fspath__(self) -> str:
        return str(self.path)


def stage_key(name: str, inputs: dict) -> str:
    blob = json.dumps({"stage": name, **inputs}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:12]


def run_stage(name: str, inputs: dict, build: Callable[[Path], None], log=print) -> Stage:
    """Return the cached stage for (name, inputs), building it with `build(tmp_dir)` if absent.

    `inputs` must be JSON-able; pass upstream Stages as their `.key`.
    """
    key = stage_key(name, inputs)
    path = runs_dir() / f"{name}-{key}"
    if (path / STAGE_FILE).exists():
        log(f"[cached] {name} ({path.name})")
        return Stage(name, key, path)
    log(f"[run]    {name} ({path.name})")
    t0 = time.time()
    with atomic_output(path, force=path.exists()) as tmp:
        tmp.mkdir(parents=True)
        build(tmp)
        (tmp / STAGE_FILE).write_text(json.dumps(
            {"stage": name, "key": key, "inputs": inputs, "seconds": round(time.time() - t0, 1),
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}, indent=2, default=str))
    log(f"[done]   {name} in {time.time() - t0:.0f} s")
    return Stage(name, key, path)


def stage_seconds(stage: Stage) -> float:
    return json.loads((stage.path / STAGE_FILE).read_text())["seconds"]
