"""Cached, resumable, verified pipeline stages.

A stage's output lives in runs/<name>-<key>/, where key hashes everything it depends on: its own
parameters, the keys of the stages it consumes, and the version of the code that builds it. A re-run with
the same parameters finds the folder and skips the work; a changed parameter changes the key of that
stage and of everything downstream only.

A stage writes into a temporary folder that is renamed into place when it finishes, so an interrupted
run leaves no half-written stage and resumes from the last finished one. A finished stage records the
SHA-256 of every file it holds and is verified whenever it is read: an edited or damaged product is an
error naming the file, never read back as truth. A build that leaves an expected product missing or
empty (or fails its `check`) has failed: nothing is cached. Two processes asking for the same stage take
a lock: the second waits and reuses the first one's result. A process holds a shared lock on every stage it
built or read back until it exits (or calls `release`), so `prune` never deletes a stage a running study
still reads from.

Building a stage takes the machine's compute lock (`compute_slot`): on a CPU, two kit processes that train or
decode at once oversubscribe the cores (a 110 s SFT stage took over 13 minutes beside two other runs), so
their builds take turns, each with every core. Reading finished stages back needs no turn.

A stage records the machine that built it (`machine.machine`: CPU, its bf16 instructions, library versions): bf16
training gives different models on different CPUs, and a cache can be copied or shared between machines. A stage
read back from another machine says so in the log, and `machines_used` hands every result's provenance the
machines behind the stages its process used.

Every stage built or read back has its stage.json's modification time set to now, so the cache knows when a
stage was last used: `prune` deletes the stages no run has used since a given time (after code changes re-key
stages, the old ones are never used again and only take disk).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import resource
import shutil
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from .console import say
from .machine import machine
from .outputs import MARKER, atomic_output, remove_stale_temporaries, sha256_file
from .places import runs_dir

STAGE_FILE = "stage.json"
LOCKS = ".locks"  # per stage: <folder>.lock (held shared by its users) and <folder>.build.lock (its one builder)
_USED: dict[str, dict | None] = {}  # stage folder -> the machine that built it (None: not recorded), this process
_HELD: dict[str, object] = {}  # stage folder -> its lock file, held shared by this process (see `release`)


class StageError(RuntimeError):
    """A stage failed to build or its finished products no longer match their checksums."""


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


def _checksums(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*"))
            if p.is_file() and p.relative_to(folder).name not in (STAGE_FILE, MARKER)}


def verify(stage_dir: Path) -> dict:
    """Refuse a finished stage whose files were changed, removed or added since it finished; return its record."""
    try:
        record = json.loads((stage_dir / STAGE_FILE).read_text())
        recorded = record["sha256"]
    except (OSError, ValueError, KeyError, TypeError):
        raise StageError(f"{stage_dir}: {STAGE_FILE} is missing or damaged; delete the folder to rebuild the "
                         "stage") from None
    actual = _checksums(stage_dir)
    for rel in sorted(set(recorded) | set(actual)):
        if recorded.get(rel) != actual.get(rel):
            what = "is missing" if rel not in actual else "was added" if rel not in recorded else "was changed"
            raise StageError(f"{stage_dir / rel} {what} since the stage finished (checksum mismatch); the kit "
                             f"will not read it back as a result. Delete {stage_dir} to rebuild the stage.")
    return record


def run_stage(name: str, inputs: dict, build: Callable[[Path], None], log=say,
              expect: tuple[str, ...] = (), check: Callable[[Path], None] | None = None) -> Stage:
    """Return the cached stage for (name, inputs), building it with `build(tmp_dir)` if absent.

    `inputs` must be JSON-able; pass upstream Stages as their `.key`. `expect` names products that must
    exist and be non-empty; `check(tmp_dir)` may raise to reject an invalid product.
    """
    key = stage_key(name, inputs)
    root = runs_dir()
    path = stage_dir(name, key)
    held = _HELD.pop(str(path), None)
    if held is not None:
        if (path / STAGE_FILE).exists():  # held by this process since it first used it
            _HELD[str(path)] = held
            return _read_back(name, key, path, log)
        held.close()  # deleted by hand meanwhile: build it again
    use = _lock_file(root, path.name)  # held shared while this process uses the stage; `prune` needs it alone
    try:
        fcntl.flock(use, fcntl.LOCK_SH)  # waits only while a `prune` deletes this very stage
        if not (path / STAGE_FILE).exists():
            with compute_slot(log), _lock_file(root, f"{path.name}.build") as building:  # one builder at a time
                if not _try_lock(building):
                    log(f"[wait]   {name} ({path.name}): another process is building it")
                    fcntl.flock(building, fcntl.LOCK_EX)
                if not (path / STAGE_FILE).exists():  # nobody built it meanwhile
                    _build(name, key, inputs, path, root, build, log, expect, check)
                    _hold(path, use)
                    return Stage(name, key, path)
        _hold(path, use)
    except BaseException:
        use.close()
        raise
    return _read_back(name, key, path, log)


_COMPUTE = {"depth": 0}  # how deep this process is in `compute_slot` (re-entrant)


@contextlib.contextmanager
def compute_slot(log=say):
    """The machine's turn to compute: an exclusive lock on $PASTKIT_COMPUTE_LOCK (default
    <temp dir>/pastkit-compute.lock; "off" to run side by side, e.g. with threads set per process on a large
    machine). Taken before any stage's build lock, so the order of locks is the same in every process; re-entrant
    within a process. Not taken where a GPU is: there the CPU is not what the builds share."""
    where = os.environ.get("PASTKIT_COMPUTE_LOCK", str(Path(tempfile.gettempdir()) / "pastkit-compute.lock"))
    if where == "off" or _COMPUTE["depth"] or _cuda():
        _COMPUTE["depth"] += 1
        try:
            yield
        finally:
            _COMPUTE["depth"] -= 1
        return
    lock = open(where, "a")
    try:
        if not _try_lock(lock):
            log(f"[wait]   another pastkit process is computing on this machine ({where}); waiting for its turn")
            fcntl.flock(lock, fcntl.LOCK_EX)
        _COMPUTE["depth"] = 1
        yield
    finally:
        _COMPUTE["depth"] = 0
        lock.close()


def _cuda() -> bool:
    import torch
    return torch.cuda.is_available()


def _read_back(name: str, key: str, path: Path, log) -> Stage:
    where = verify(path).get("machine")
    try:  # last used now (stage.json is outside the checksums); a read-only cache still reads
        os.utime(path / STAGE_FILE)
    except OSError:
        pass
    _USED[path.name] = where
    elsewhere = "" if where == machine() else f" · built on {describe_machine(where)}"
    log(f"[cached] {name} ({path.name}){elsewhere}")
    return Stage(name, key, path)


def _build(name, key, inputs, path, root, build, log, expect, check) -> None:
    for leftover in remove_stale_temporaries(root):
        log(f"[clean]  removed {leftover.name}, left by a run that was killed")
    log(f"[run]    {name} ({path.name})")
    t0 = time.time()
    with atomic_output(path, force=path.exists()) as tmp, _disk_full_said(root, name):
        tmp.mkdir(parents=True)
        build(tmp)
        for product in expect:
            f = tmp / product
            if not f.exists() or (f.is_file() and f.stat().st_size == 0) or (f.is_dir() and not any(f.iterdir())):
                raise StageError(f"stage {name}: the build left {product} missing or empty; nothing was cached")
        if check is not None:
            check(tmp)
        (tmp / STAGE_FILE).write_text(json.dumps(
            {"stage": name, "key": key, "inputs": inputs, "seconds": round(time.time() - t0, 1),
             "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "machine": machine(),
             "sha256": _checksums(tmp)}, indent=2, default=str))
    _USED[path.name] = machine()
    log(f"[done]   {name} in {time.time() - t0:.0f} s")


def _hold(path: Path, lock) -> None:
    """Keep this process's shared lock on a stage it uses: `prune` in any process skips the stage until `release`
    or exit. One open file per stage, so the soft limit on open files is raised to the hard one the first time."""
    if not _HELD:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and (hard == resource.RLIM_INFINITY or soft < hard):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard if hard != resource.RLIM_INFINITY else 65536, hard))
    _HELD[str(path)] = lock


def release() -> None:
    """Let go of every stage this process holds, so that `prune` may delete them (a long-lived kernel that is done
    with a study; tests)."""
    while _HELD:
        _HELD.popitem()[1].close()


def machines_used() -> list[dict]:
    """The machines that built the stages this process built or read back: one entry per machine, with how many
    stages it built and whether it is this one. A result's provenance carries it, so numbers computed from a
    cache made elsewhere (or partly elsewhere) say so. `machine` None: built before stages recorded it."""
    counts = Counter(json.dumps(m, sort_keys=True) for m in _USED.values())
    return [{"machine": m, "stages": n, "this machine": m == machine()}
            for m, n in ((json.loads(k), n) for k, n in counts.items())]


def stage_record(stage_dir: Path) -> dict:
    """A finished stage's stage.json as it stands, {} where it is unreadable: for listing the cache, which must
    still work (and prune) where a record is damaged."""
    try:
        record = json.loads((stage_dir / STAGE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return record if isinstance(record, dict) else {}


def describe_machine(m: dict | None) -> str:
    """A machine record in a few words, for the log and `pastkit stages`."""
    if m is None:
        return "a machine not recorded (the stage predates the record)"
    ident = f"{m['cpu_id']}; " if m.get("cpu_id") else ""
    return f"{m.get('cpu')} ({ident}bf16: {', '.join(m.get('bf16') or []) or 'none'}; torch {m.get('torch')})"


@contextlib.contextmanager
def _disk_full_said(root: Path, name: str):
    """Turn "no space left on device", however deep a library raised it, into an error that says what to do.

    Every stage that holds a model stores it whole (a three-seed LooGLE run once filled this machine's disk),
    so the cache is where the space went; the half-written stage is removed by the atomic write around it.
    """
    try:
        yield
    except Exception as e:
        chain, seen = [], e
        while seen is not None and len(chain) < 20:
            chain.append(seen)
            seen = seen.__cause__ or seen.__context__
        if any(getattr(x, "errno", None) == errno.EFBIG or "File too large" in str(x) for x in chain):
            raise StageError(f"stage {name}: a file of the stage grew past this process's file-size limit (`ulimit -f`"
                             f" is {_fsize_limit()}) while writing into {root}. Nothing was cached; raise the limit "
                             "(`ulimit -f unlimited`) and run again: finished stages are kept.") from e
        if not any(getattr(x, "errno", None) == errno.ENOSPC or "No space left on device" in str(x) for x in chain):
            raise
        held = sum(c.bytes for c in cached_stages()) / 1e9
        free = shutil.disk_usage(root).free / 1e9
        raise StageError(f"stage {name}: the disk holding the stage cache {root} is full ({free:.1f} GB free; the "
                         f"cache holds {held:.1f} GB). Nothing was cached. `pastkit stages` shows what it holds and "
                         "`pastkit stages --unused-for 1d --delete` deletes the stages no run used for a day; or "
                         "point PASTKIT_RUNS at a larger disk. Finished stages are kept: the run resumes from "
                         "them.") from e


def _fsize_limit() -> str:
    soft = resource.getrlimit(resource.RLIMIT_FSIZE)[0]
    return "unlimited" if soft == resource.RLIM_INFINITY else f"{soft} bytes"


def _lock_file(root: Path, stage_folder: str):
    """The open lock file of the stage in `root/stage_folder` (created if absent), for `_try_lock`/flock."""
    (root / LOCKS).mkdir(parents=True, exist_ok=True)
    return open(root / LOCKS / f"{stage_folder}.lock", "w")


def _try_lock(lock, kind: int = fcntl.LOCK_EX) -> bool:
    try:
        fcntl.flock(lock, kind | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def stage_dir(name: str, key: str) -> Path:
    """Where the stage (name, key) lives in the runs folder, built or not."""
    return runs_dir() / f"{name}-{key}"


def stage_inputs(stage: Stage) -> dict:
    """The inputs a finished stage was keyed on (upstream stages appear as their keys)."""
    return json.loads((stage.path / STAGE_FILE).read_text())["inputs"]


@dataclass(frozen=True)
class CachedStage:
    """A finished stage in the runs folder, as `cached_stages` finds it."""

    path: Path
    name: str
    last_used: float  # seconds since the epoch: when a run last built or read it back
    bytes: int


def cached_stages() -> list[CachedStage]:
    """Every finished stage in the runs folder (folders with a stage.json), least recently used first."""
    root, found = runs_dir(), []
    if root.is_dir():
        for d in root.iterdir():
            record = d / STAGE_FILE
            if d.is_dir() and record.is_file():
                size = sum(f.stat().st_size for f in d.rglob("*") if f.is_file())
                found.append(CachedStage(d, d.name.rsplit("-", 1)[0], record.stat().st_mtime, size))
    return sorted(found, key=lambda c: c.last_used)


def prune(unused_since: float, delete: bool, log=say) -> list[CachedStage]:
    """The stages no run has used since `unused_since` (epoch seconds); deleted only if `delete`.

    A stage any process holds a lock on (being built, or used by a running study, this process included) is
    skipped. Only folders holding a stage.json, i.e. stages the kit finished, are ever touched.
    """
    root, chosen = runs_dir(), []
    for c in cached_stages():
        if c.last_used >= unused_since:
            continue
        if delete:
            with _lock_file(root, c.path.name) as lock:
                if not _try_lock(lock):
                    log(f"[skip]   {c.path.name}: in use by a running process")
                    continue
                shutil.rmtree(c.path)
        chosen.append(c)
    return chosen
