"""The stage cache knows when each stage was last used, prunes only stages no run used since a given time, and
says what to do when it fills the disk."""

import errno
import fcntl
import json
import os
import time

import pytest

from pastkit.cli import main
from pastkit.stages import LOCKS, STAGE_FILE, StageError, cached_stages, prune, release, run_stage

QUIET = {"log": lambda *_: None}


def _stage(x):
    """A finished stage this process is done with (`release`): as one a run that has ended left in the cache."""
    stage = run_stage("answers", {"x": x}, lambda d: (d / "answers.csv").write_text(f"score\n{x}\n"),
                      expect=("answers.csv",), **QUIET)
    release()
    return stage


def _age(stage, hours):
    t = time.time() - hours * 3600
    os.utime(stage.path / STAGE_FILE, (t, t))


def test_reading_a_stage_back_marks_it_used(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    stage = _stage(1)
    _age(stage, 5)
    [before] = cached_stages()
    assert time.time() - before.last_used > 4 * 3600
    _stage(1)  # read back: verified, and its last use is now
    [after] = cached_stages()
    assert time.time() - after.last_used < 60 and after.bytes > 0 and after.name == "answers"


def test_prune_lists_then_deletes_only_stages_unused_since(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    old, recent = _stage(1), _stage(2)
    _age(old, 5)
    foreign = tmp_path / "my-notes"  # not a stage: never touched
    foreign.mkdir()
    os.utime(foreign, (0, 0))
    listed = prune(time.time() - 3600, delete=False)
    assert [c.path for c in listed] == [old.path] and old.path.exists()  # a dry run deletes nothing
    deleted = prune(time.time() - 3600, delete=True)
    assert [c.path for c in deleted] == [old.path]
    assert not old.path.exists() and recent.path.exists() and foreign.exists()


def test_prune_skips_a_stage_another_process_holds(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    stage = _stage(1)
    _age(stage, 5)
    with open(tmp_path / LOCKS / f"{stage.path.name}.lock", "w") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        seen = []
        assert prune(time.time(), delete=True, log=seen.append) == []
    assert stage.path.exists() and "in use" in seen[0]


def test_stages_command(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    _age(_stage(1), 5)
    _stage(2)
    record = json.loads((_stage(3).path / STAGE_FILE).read_text())  # a stage that took 90 s to build
    (tmp_path / f"answers-{record['key']}" / STAGE_FILE).write_text(json.dumps({**record, "seconds": 90.0}))
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    assert "3 stages" in out and "1.5 min to build" in out  # where a run's time went, per kind of stage
    assert main(["stages", "--unused-for", "2h"]) == 0
    assert "1 stages" in capsys.readouterr().out and len(cached_stages()) == 3
    assert main(["stages", "--unused-for", "2h", "--delete"]) == 0
    assert "deleted" in capsys.readouterr().out and len(cached_stages()) == 2


def test_the_cache_listing_survives_a_damaged_stage_record(tmp_path, monkeypatch, capsys):
    """`pastkit stages` is how a damaged stage is found and pruned, so a record it cannot read is listed, not fatal."""
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    stage = _stage(1)
    (stage.path / STAGE_FILE).write_text("{not json")
    _age(stage, 5)
    assert main(["stages"]) == 0
    out = capsys.readouterr().out
    assert "1 stages" in out and "0.0 min to build" in out and "not recorded" in out
    assert main(["stages", "--unused-for", "2h", "--delete"]) == 0 and cached_stages() == []


@pytest.mark.parametrize("argv, message", [(["stages", "--unused-for", "3x"], "a number with m, h or d"),
                                           (["stages", "--unused-for=-1h"], "must not be negative"),
                                           (["stages", "--delete"], "--delete needs --unused-for")])
def test_stages_command_refuses_unclear_requests(argv, message, tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    assert main(argv) == 2 and message in capsys.readouterr().err


def _fills_the_disk(how: str):
    def build(d):
        (d / "model.safetensors").write_bytes(b"half")
        if how == "os":
            raise OSError(errno.ENOSPC, "No space left on device")
        # as safetensors reports it: its own exception, the OS error only in the text
        raise RuntimeError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                           'left on device" })')
    return build


@pytest.mark.parametrize("how", ["os", "library"])
def test_a_full_disk_says_where_the_space_went_and_caches_nothing(how, tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    _stage(1)
    with pytest.raises(StageError) as e:
        run_stage("sft-full", {"x": 1}, _fills_the_disk(how), expect=("model.safetensors",), **QUIET)
    said = str(e.value)
    assert str(tmp_path) in said and "is full" in said and "pastkit stages --unused-for" in said
    assert [c.name for c in cached_stages()] == ["answers"]  # the finished stage is kept, the broken one is not
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([LOCKS, _stage(1).path.name])  # no temporary left


def test_other_build_errors_pass_through_unchanged(tmp_path, monkeypatch):
    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))

    def build(d):
        raise OSError(errno.EACCES, "Permission denied")

    with pytest.raises(PermissionError):
        run_stage("sft-full", {"x": 1}, build, **QUIET)


def test_a_stage_read_back_from_another_machine_says_so_and_results_record_it(tmp_path, monkeypatch, capsys):
    """bf16 training differs between CPUs, and a cache can be copied between machines: every stage records the
    machine that built it, reading one built elsewhere says so, and a result's provenance lists the machines
    behind the stages its process used."""
    import json

    from pastkit import report, stages
    from pastkit.benchmarks.squad import SquadParams

    monkeypatch.setenv("PASTKIT_RUNS", str(tmp_path))
    monkeypatch.setattr(stages, "_USED", {})
    here, elsewhere = _stage(1), _stage(2)
    assert json.loads((here.path / STAGE_FILE).read_text())["machine"] == report.machine()
    record = json.loads((elsewhere.path / STAGE_FILE).read_text())
    record["machine"] = {**record["machine"], "cpu": "Other CPU 7000", "cpu_id": "Other cpu family 6 model 143",
                         "bf16": ["amx_bf16"]}
    (elsewhere.path / STAGE_FILE).write_text(json.dumps(record))  # as a cache copied from another machine
    older = _stage(3)
    record = json.loads((older.path / STAGE_FILE).read_text())
    del record["machine"]  # as a stage built before stages recorded it
    (older.path / STAGE_FILE).write_text(json.dumps(record))

    seen = []
    for x in (1, 2, 3):
        run_stage("answers", {"x": x}, lambda d: None, expect=("answers.csv",), log=seen.append)
    assert seen[0].endswith(f"({here.path.name})")  # this machine's own: nothing more to say
    elsewhere_said = "built on Other CPU 7000 (Other cpu family 6 model 143; bf16: amx_bf16"
    assert elsewhere_said in seen[1] and "not recorded" in seen[2]
    built_on = report.provenance(SquadParams(), "02_squad")["stages_built_on"]
    assert sorted((e["machine"] or {}).get("cpu", "?") for e in built_on) == sorted(
        ["?", "Other CPU 7000", report.machine()["cpu"]])
    assert [e["this machine"] for e in built_on if e["machine"] == report.machine()] == [True]
    assert sum(e["stages"] for e in built_on) == 3 and sum(e["this machine"] for e in built_on) == 1
    capsys.readouterr()
    assert main(["stages"]) == 0  # the cache's own listing counts the stages per machine too
    listing = capsys.readouterr().out
    assert elsewhere_said in listing and "predates the record): 1 stage\n" in listing
