"""Writing outputs without losing anything: atomic writes, input/output separation, kit-owned replacement.

The rules every writer in pastkit (CLI and Python API alike) follows:
- an output path never is, contains, or lies inside one of the inputs it is computed from;
- an existing output is replaced only with force=True, and only if pastkit wrote it (it can tell:
  folders it writes carry a `.pastkit` marker listing the files it put there, so a folder holding anything
  else, or a file whose size changed, is not the kit's; skill-vector files carry pastkit metadata; other files
  a `<name>.provenance.json` record whose checksum still matches, and a record of that name that pastkit
  did not write is never replaced);
- nothing pastkit did not create is ever deleted; a write lands whole or not at all.
Temporary siblings (`.<name>.tmp-<pid>`) left by a killed process are removed by the next writer.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

MARKER = ".pastkit"  # inside every folder pastkit writes
RECORD_SUFFIX = ".provenance.json"  # beside every other file pastkit writes
_TEMP = re.compile(r"^\.(?P<name>.+)\.(?:tmp|old)-(?P<pid>\d+)$")


class OutputError(FileExistsError):
    """An output that would overwrite an input or something pastkit did not write."""


def sha256_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def record_path(path: Path) -> Path:
    return path.with_name(path.name + RECORD_SUFFIX)


def written_by_kit(path: str | os.PathLike) -> bool:
    """Did pastkit write this file or folder (and is it unchanged since, for plain files)?"""
    path = Path(path)
    if path.is_symlink():
        return False
    if path.is_dir():
        return foreign_files(path) == []
    if path.suffix == ".safetensors":
        from .checkpoint import CheckpointError, read_header
        try:
            return "pastkit" in read_header(path)[1]
        except (CheckpointError, OSError):
            return False
    if path.name.endswith(RECORD_SUFFIX):  # a provenance record itself
        return _read_record(path) is not None
    rec = _read_record(record_path(path))
    return rec is not None and rec.get("sha256") in (None, sha256_file(path))


def folder_listing(folder: Path) -> dict[str, int]:
    """Every file below `folder` (the marker aside) with its size in bytes (-1 for a symlink): what the marker
    records, so that a file added or resized since is known not to be the kit's."""
    return {str(p.relative_to(folder)): -1 if p.is_symlink() else p.stat().st_size
            for p in sorted(folder.rglob("*")) if (p.is_file() or p.is_symlink()) and p.name != MARKER}


def foreign_files(folder: Path) -> list[str] | None:
    """The files of a folder pastkit wrote that it did not put there (added, or resized since); None if the folder
    has no marker of pastkit's. Sizes, not checksums: a 15 GB model is not re-hashed to decide whether it may be
    replaced. A file the user deleted is not foreign: replacing the folder loses nothing of theirs."""
    try:
        marker = json.loads((folder / MARKER).read_text())
        recorded = marker["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(recorded, dict):
        return None
    return [name for name, size in folder_listing(folder).items() if recorded.get(name) != size]


def _read_record(path: Path) -> dict | None:
    """A provenance record pastkit wrote, or None."""
    try:
        rec = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return rec if isinstance(rec, dict) and "pastkit_version" in rec else None


def _within(child: Path, parent: Path) -> bool:
    return child == parent or parent in child.parents


def check_separate(out: str | os.PathLike, inputs: Iterable[str | os.PathLike | None]) -> None:
    """Refuse an output that is, contains, or lies inside an input (symlinks resolved)."""
    o = Path(out).resolve()
    for i in inputs:
        if i is None:
            continue
        p = Path(i).resolve()
        if _within(o, p) or _within(p, o):
            rel = "is" if o == p else "lies inside" if _within(o, p) else "contains"
            raise OutputError(f"output {out} {rel} the input {i}; choose an output path apart from the inputs")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def remove_stale_temporaries(folder: Path, name: str | None = None) -> list[Path]:
    """Remove `.X.tmp-PID`/`.X.old-PID` siblings whose process is gone (a killed run's leftovers)."""
    removed = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        m = _TEMP.match(p.name)
        if m and (name is None or m["name"] == name) and int(m["pid"]) != os.getpid() \
                and not _pid_alive(int(m["pid"])):
            _remove(p)
            removed.append(p)
    return removed


def _refuse_existing(path: Path, force: bool) -> None:
    record = record_path(path)
    if not path.name.endswith(RECORD_SUFFIX) and (record.exists() or record.is_symlink()) \
            and path.suffix != ".safetensors" and (record.is_symlink() or _read_record(record) is None):
        raise OutputError(f"{record} exists and was not written by pastkit; the provenance record of {path.name} "
                          "would replace it. Move it away or choose another output name")
    if not (path.exists() or path.is_symlink()):
        return
    if not force:
        raise OutputError(f"{path} exists; pass force=True (CLI: --force) to replace it")
    if not written_by_kit(path):
        foreign = foreign_files(path) if path.is_dir() else None
        extra = f" ({', '.join(foreign[:5])} {'was' if len(foreign) == 1 else 'were'} not put there by pastkit)" \
            if foreign else ""
        raise OutputError(f"{path} exists and was not written by pastkit (or was changed since){extra}; "
                          "refusing to replace it, even with force")


@contextlib.contextmanager
def atomic_output(path: str | os.PathLike, force: bool = False, inputs: Iterable = (),
                  provenance: dict | None = None) -> Iterator[Path]:
    """Yield a temporary sibling path; on success it replaces `path`, on any error it is removed.

    Checked before any work starts and again just before the final rename (something may have appeared at
    `path` meanwhile): the rules in the module docstring. A folder gets the `.pastkit` marker; a file other
    than a .safetensors vector gets a provenance record (`provenance` plus its checksum) beside it.
    """
    path = Path(path)
    inputs = list(inputs)
    check_separate(path, inputs)
    _refuse_existing(path, force)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(path.parent, path.name)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    old = path.parent / f".{path.name}.old-{os.getpid()}"
    _remove(tmp)
    try:
        yield tmp
        if tmp.is_dir():
            (tmp / MARKER).write_text(json.dumps({"written_by": "pastkit", "created": _now(),
                                                  "files": folder_listing(tmp)}) + "\n")
        _refuse_existing(path, force)  # again: it may have appeared while we worked
        if path.exists():
            os.replace(path, old)
        os.replace(tmp, path)
        if path.is_file() and path.suffix != ".safetensors" and not path.name.endswith(RECORD_SUFFIX):
            _write_record(path, provenance or {})
    finally:
        _remove(tmp)
        _remove(old)


def _write_record(path: Path, provenance: dict) -> None:
    from . import __version__
    rec = {**provenance, "file": path.name, "sha256": sha256_file(path), "pastkit_version": __version__}
    tmp = path.parent / f".{path.name}{RECORD_SUFFIX}.tmp-{os.getpid()}"
    try:
        tmp.write_text(json.dumps(rec, indent=2, default=str) + "\n")
        os.replace(tmp, record_path(path))
    finally:
        _remove(tmp)


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


def _remove(p: Path) -> None:
    if p.is_dir() and not p.is_symlink():
        shutil.rmtree(p)
    elif p.exists() or p.is_symlink():
        p.unlink()
