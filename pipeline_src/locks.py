"""Stale Snakemake locks: after a hard kill (SIGKILL, OOM, a closed laptop) Snakemake leaves its lock
files behind and the next run stops with a LockException. When no Snakemake process is alive in the
working directory, the locks are stale and are removed, as `snakemake --unlock` would do; the run then
completes the unfinished jobs (their outputs are marked incomplete and rerun).
"""
from __future__ import annotations

import os
from pathlib import Path

LOCK_DIR = Path(".snakemake") / "locks"


def _ancestors() -> set[int]:
    pids, pid = set(), os.getpid()
    while pid > 1:
        pids.add(pid)
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return pids


def snakemake_alive_in(workdir: Path) -> bool:
    """Whether any process other than this one and its parents runs Snakemake in workdir (Linux /proc;
    where /proc cannot be read, assume one does, so nothing is removed)."""
    proc, ours, workdir = Path("/proc"), _ancestors(), workdir.resolve()
    if not proc.is_dir():
        return True
    for entry in proc.iterdir():
        if not entry.name.isdigit() or int(entry.name) in ours:
            continue
        try:
            if b"snakemake" in (entry / "cmdline").read_bytes() and (entry / "cwd").resolve() == workdir:
                return True
        except OSError:  # gone, or another user's
            continue
    return False


def clear_stale_locks(workdir: Path) -> str | None:
    """Remove the lock files when no other Snakemake runs in workdir; returns the line to show, or None."""
    locks = sorted((workdir / LOCK_DIR).glob("*.lock"))
    if not locks or snakemake_alive_in(workdir):
        return None
    for lock in locks:
        lock.unlink(missing_ok=True)
    return (f"note: removed {len(locks)} stale Snakemake lock file(s) in {workdir / LOCK_DIR}: no Snakemake "
            "process is running here (an earlier run was killed); unfinished jobs will rerun")
