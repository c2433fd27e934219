"""Stale Snakemake locks: removed only when an owner record names this host and a process that is gone;
every other lock stays, with one line saying how to unlock. (A real hard-killed run:
tests/test_workflow.py::test_hard_killed_run_recovers_without_unlock_or_activated_venv.)"""
import json
import os
import subprocess

import pytest

from pipeline_src.plumbing.locks import LOCK_DIR, clear_stale_locks, record_owner, this_host

pytestmark = pytest.mark.skipif(not os.path.isdir("/proc/self"), reason="owner checks read Linux /proc")


def snakemake_locks(workdir, n=0):
    """The two files Snakemake writes for one run: the paths it locks, nothing about who locked them."""
    lock_dir = workdir / LOCK_DIR
    lock_dir.mkdir(parents=True, exist_ok=True)
    names = [f"{n}.input.lock", f"{n}.output.lock"]
    for name in names:
        (lock_dir / name).write_text("results/runs/s/r/metrics.json\n")
    return names


def remaining(workdir):
    return sorted(p.name for p in (workdir / LOCK_DIR).glob("*.lock"))


def test_locks_of_a_killed_run_on_this_host_are_removed(tmp_path):
    names = snakemake_locks(tmp_path)
    killed = subprocess.Popen(["sleep", "60"])
    owner = record_owner(tmp_path, names, pid=killed.pid)
    killed.kill()
    killed.wait()
    lines = clear_stale_locks(tmp_path)
    assert remaining(tmp_path) == [] and not owner.exists()
    assert len(lines) == 1 and lines[0].startswith("note: removed 2 stale Snakemake lock file(s)")


def test_locks_of_a_running_snakemake_stay(tmp_path):
    names = snakemake_locks(tmp_path)
    record_owner(tmp_path, names)  # this process: alive
    [line] = clear_stale_locks(tmp_path)
    assert remaining(tmp_path) == sorted(names)
    assert f"Snakemake pid {os.getpid()} holds them and still runs on this host" in line


def test_a_reused_pid_does_not_keep_a_dead_runs_locks(tmp_path):
    """Same PID, other start time: the process that wrote the locks is gone, whatever holds its PID now."""
    names = snakemake_locks(tmp_path)
    owner = record_owner(tmp_path, names)
    record = json.loads(owner.read_text())
    owner.write_text(json.dumps({**record, "start_time": str(int(record["start_time"]) - 1)}))
    clear_stale_locks(tmp_path)
    assert remaining(tmp_path) == []


@pytest.mark.parametrize("other", [{"host": "login2"}, {"boot_id": "an-earlier-boot"}, {"pid_ns": "pid:[1]"}])
def test_locks_of_another_host_stay_on_a_shared_filesystem(tmp_path, other):
    """A second login node (or this one before a reboot, or another container) cannot see that process:
    its locks stay even though no such PID runs here."""
    names = snakemake_locks(tmp_path)
    gone = subprocess.Popen(["true"])
    gone.wait()
    owner = record_owner(tmp_path, names, pid=os.getpid())
    record = {**json.loads(owner.read_text()), **other, "pid": gone.pid}
    owner.write_text(json.dumps(record))
    [line] = clear_stale_locks(tmp_path)
    assert remaining(tmp_path) == sorted(names) and owner.exists()
    assert "cannot be checked from here" in line and line.endswith("run snakemake --unlock (with the same --configfile)")
    assert "\n" not in line


def test_unclaimed_locks_stay_with_one_line_saying_how_to_unlock(tmp_path):
    names = snakemake_locks(tmp_path)
    [line] = clear_stale_locks(tmp_path)
    assert remaining(tmp_path) == sorted(names)
    assert "no owner record claims them" in line and "snakemake --unlock" in line


def test_only_the_dead_runs_locks_go_when_two_runs_share_the_folder(tmp_path):
    dead_locks, live_locks = snakemake_locks(tmp_path, 0), snakemake_locks(tmp_path, 1)
    killed = subprocess.Popen(["sleep", "60"])
    record_owner(tmp_path, dead_locks, pid=killed.pid)
    killed.kill()
    killed.wait()
    record_owner(tmp_path, live_locks)
    removed, kept = clear_stale_locks(tmp_path)
    assert remaining(tmp_path) == sorted(live_locks)
    assert removed.startswith("note: removed 2") and "still runs on this host" in kept


def test_no_locks_no_line(tmp_path):
    assert clear_stale_locks(tmp_path) == []
    assert record_owner(tmp_path, []) is None
    assert this_host()["host"]
