"""Stale Snakemake locks, removed only when provably stale.

After a hard kill (SIGKILL, OOM, a closed laptop) Snakemake leaves its lock files in .snakemake/locks/
and the next run stops with a LockException. A lock file holds only the paths it locks: not who
wrote it. So each run records its owner beside its locks (`record_owner`, from the workflow's
`onstart`, which Snakemake calls once it holds its locks, and never in a dry run): host, boot, PID
namespace, PID and the process's start time, and the lock files it holds.

A lock file is removed only when an owner record claims it, names this host (same host name, same
running kernel, same PID namespace: then /proc answers for that PID) and that process is gone (no
such PID, or one started at another time). Every other lock file stays, with one line saying how to
unlock by hand: a lock of another login node on a shared filesystem, or of this host before a
reboot, cannot be checked from here, nor can one no record claims. Snakemake removes the whole
folder, owner records included, when a run ends or on `snakemake --unlock`.

That last point also removes the locks of every other run in the folder, while they still run (two
runs with other results_dir in one checkout): Snakemake's locks then protect nothing. So each run also
holds its own lock on its results folder (`hold_results_folder`, from `onstart`): an flock on
<results_dir>/.run.lock, which no other run removes and the kernel releases when the process ends,
however it ends (no stale lock after a kill -9). A second run in the same results folder stops with one
line, having taken none of the first run's locks with it (`drop_own_locks`).
"""
from __future__ import annotations

import json
import os
import socket
import sys
from pathlib import Path

LOCK_DIR = Path(".snakemake") / "locks"
OWNER_GLOB = "owner-*.json"  # never matches Snakemake's own <n>.input.lock / <n>.output.lock
UNLOCK = "snakemake --unlock (with the same --configfile)"
RESULTS_LOCK = ".run.lock"  # in a results folder: held by the Snakemake running in it
_held = {}  # results folder -> its open lock file: the lock lasts while the file stays open


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks after boot (/proc/<pid>/stat field 22); None if gone."""
    stat = _read(f"/proc/{pid}/stat")
    return stat.rsplit(")", 1)[1].split()[19] if stat else None


def this_host() -> dict:
    """What makes /proc of this machine authoritative for a PID: the host, the kernel boot and the PID
    namespace (containers on one kernel have their own)."""
    try:
        pid_ns = os.readlink("/proc/self/ns/pid")
    except OSError:
        pid_ns = None
    return {"host": socket.gethostname(), "boot_id": _read("/proc/sys/kernel/random/boot_id"), "pid_ns": pid_ns}


def record_owner(workdir: Path, lock_files, pid: int | None = None) -> Path | None:
    """Write this process's owner record for the lock files it holds (names under .snakemake/locks/);
    None when it holds none or this machine has no /proc (its locks then stay, as unclaimed)."""
    pid = os.getpid() if pid is None else pid
    held = sorted(Path(f).name for f in lock_files)
    started = _start_time(pid)
    if not held or started is None:
        return None
    record = {**this_host(), "pid": pid, "start_time": started, "locks": held}
    path = workdir / LOCK_DIR / f"owner-{record['host']}-{pid}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record, indent=1) + "\n")
    return path


def _owner_state(record: dict, host: dict) -> str:
    """'gone', 'running', or 'unknown' (another host, another boot or namespace, or no /proc here)."""
    if any(record.get(key) != value or value is None for key, value in host.items()):
        return "unknown"
    return "running" if _start_time(int(record["pid"])) == record["start_time"] else "gone"


def clear_stale_locks(workdir: Path) -> list[str]:
    """Remove the lock files whose owner provably is gone; returns the lines to show (none when no lock
    is left behind)."""
    lock_dir = workdir / LOCK_DIR
    locks = {path.name for path in lock_dir.glob("*.lock")}
    if not locks:
        return []
    host, removed, kept = this_host(), [], {}
    for owner in sorted(lock_dir.glob(OWNER_GLOB)):
        try:
            record = json.loads(owner.read_text())
            claimed = set(record["locks"]) & locks
        except (OSError, ValueError, KeyError, TypeError):
            continue  # unreadable: its locks count as unclaimed
        state = _owner_state(record, host)
        if state == "gone":
            for name in claimed:
                (lock_dir / name).unlink(missing_ok=True)
            owner.unlink(missing_ok=True)
            removed += claimed
        else:
            kept.update({name: (state, record) for name in claimed})
        locks -= claimed
    lines = []
    if removed:
        lines.append(f"note: removed {len(removed)} stale Snakemake lock file(s) in {lock_dir}: the Snakemake "
                     "that held them here is gone (an earlier run was killed); unfinished jobs will rerun")
    if kept or locks:
        lines.append(_kept_line(lock_dir, kept, len(locks)))
    return lines


def _kept_line(lock_dir: Path, kept: dict, unclaimed: int) -> str:
    """One line for the lock files left in place, on the first reason found."""
    total = len(kept) + unclaimed
    running = [record for state, record in kept.values() if state == "running"]
    if running:
        return (f"note: {total} Snakemake lock file(s) in {lock_dir} kept: Snakemake pid {running[0]['pid']} "
                f"holds them and still runs on this host; wait for it or stop it (only then {UNLOCK})")
    if kept:
        record = next(iter(kept.values()))[1]
        return (f"note: {total} Snakemake lock file(s) in {lock_dir} kept: they belong to Snakemake pid "
                f"{record['pid']} on host {record['host']} (another machine, or this one before a reboot), which "
                f"cannot be checked from here; if no Snakemake runs in this folder on any host, run {UNLOCK}")
    return (f"note: {total} Snakemake lock file(s) in {lock_dir} kept: no owner record claims them (a run killed "
            f"as it started, or one run with --no-hooks); if no Snakemake runs in this folder on any host, run {UNLOCK}")


def hold_results_folder(results_dir: Path) -> str | None:
    """Lock the results folder for this process's lifetime; None once held, else the one line refusing a
    second run in it. Held already by this process: None. Without fcntl (not POSIX): None, unlocked."""
    try:
        import fcntl
    except ImportError:
        return None
    path = Path(results_dir) / RESULTS_LOCK
    if str(path.resolve()) in _held:
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+")  # never truncated before it is held: the holder's line stays readable
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        holder = handle.read().strip() or "another process"
        handle.close()
        return (f"error: another Snakemake ({holder}) is running in results folder {results_dir} (it holds "
                f"{path}); wait for it to end or stop it, or give this run another results_dir")
    except OSError as err:  # a filesystem without locks (some cluster mounts): run as before, unprotected
        handle.close()
        print(f"note: {path} cannot be locked ({err.strerror}); nothing keeps a second run out of this results "
              "folder", file=sys.stderr)
        return None
    handle.seek(0)
    handle.truncate()
    handle.write(f"Snakemake pid {os.getpid()} on host {socket.gethostname()}\n")
    handle.flush()
    _held[str(path.resolve())] = handle
    return None


def drop_own_locks(lock_files) -> None:
    """Remove only these Snakemake lock files (the ones this run wrote): a run refused before it started
    must not leave them to block the next run, nor remove the others' as Snakemake's own unlock would."""
    for name in lock_files:
        Path(name).unlink(missing_ok=True)
