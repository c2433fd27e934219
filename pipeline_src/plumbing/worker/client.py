"""Hand a command to the worker named by $PIPELINE_WORKER_SOCKET and wait for its exit status.

`python -m pipeline_src CMD ...` does so itself when the variable is set (its __main__.py, before any
other import), and runs the command in-process when no worker answers;
`python -m pipeline_src.plumbing.worker.client MODULE ARGS...` does the same for any `python -m MODULE ARGS...`.
Standard library only: this is what each job starts.

The client stays until the child ends: SIGTERM, SIGINT and SIGHUP sent to it (Snakemake cancelling a
job, SLURM ending one) go on to the child, and if the client itself dies the worker ends the child. On
Linux the client also follows its parent, the job's shell: once that is gone (killed), the child gets
SIGTERM. A child ended by a signal is named in the job's log (the client's stderr): a plain process
killed so writes nothing there, and only the shell's exit status would tell.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys
import time

from pipeline_src.plumbing.worker import PID_FILE, SOCKET_ENV

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# what the kernel sends the client when its parent dies (prctl PR_SET_PDEATHSIG): a signal of its own,
# since it also comes when the parent's forking thread ends, which the handler tells apart
PARENT_DEATH = signal.SIGUSR2
PR_SET_PDEATHSIG = 1
PARENT = os.getppid()  # the job's shell, as this process started: it may die before the job reaches the worker
STARTING_WAIT_S = 120.0


def request(argv: list[str]) -> bytes:
    payload = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    return struct.pack("!I", len(payload)) + payload


def wait_for_starting_worker(path: str, limit_s: float = STARTING_WAIT_S) -> None:
    """A worker imports torch and the rest before it listens (several seconds): the jobs started meanwhile
    wait for its socket rather than each paying that import, while the process named in the PID_FILE
    beside the socket is alive, and at most limit_s."""
    deadline = time.monotonic() + limit_s
    while not os.path.exists(path) and time.monotonic() < deadline and _starting(path):
        time.sleep(0.05)


def _starting(path: str) -> bool:
    """The worker named beside `path` runs (Linux /proc: a dead one left unreaped is a zombie, which
    os.kill(pid, 0) would call alive). Elsewhere nothing waits."""
    try:
        with open(os.path.join(os.path.dirname(path), PID_FILE)) as named:
            pid = int(named.read())
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] not in ("Z", "X")
    except (OSError, ValueError, IndexError):
        return False


def run_in_worker(path: str, argv: list[str]) -> int | None:
    """The child's exit status, or None when no worker answers at `path` (nothing was run)."""
    wait_for_starting_worker(path)
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        conn.connect(path)
        socket.send_fds(conn, [request(argv)], [0, 1, 2])
        replies = conn.makefile("r")
        started = replies.readline().split()
    except OSError:
        conn.close()
        return None
    if len(started) != 2 or started[0] != "pid":
        conn.close()
        return None

    def forward(signum, _frame):
        try:
            conn.sendall(f"signal {signum}\n".encode())
        except OSError:
            pass

    for signum in FORWARDED:
        signal.signal(signum, forward)
    _follow_parent(lambda: forward(signal.SIGTERM, None))
    while True:
        try:
            line = replies.readline()
        except InterruptedError:
            continue
        if not line:  # the worker went away mid-job: the job's result is unknown, so it failed
            print("error: the job's worker exited before the job ended", file=sys.stderr)
            return 1
        kind, _, value = line.partition(" ")
        if kind == "exit":
            code, _, killed_by = value.strip().partition(" ")
            if killed_by:
                print(f"error: the job (pid {started[1]}) was killed by {killed_by} (exit status {code})",
                      file=sys.stderr, flush=True)
            return int(code)


def _follow_parent(stop) -> None:
    """Linux: call stop() once this process's parent has died (the kernel's parent-death signal), and
    at once if it died already. Elsewhere nothing: the worker still ends the child if the client dies."""
    def parent_died(_signum, _frame):
        if os.getppid() != PARENT:  # reparented: the parent itself is gone, not just its forking thread
            stop()

    signal.signal(PARENT_DEATH, parent_died)
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, PARENT_DEATH)
    except (OSError, AttributeError):
        return
    if os.getppid() != PARENT:  # it died before the request took effect
        stop()


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m pipeline_src.plumbing.worker.client MODULE [ARGS...]")
    argv = sys.argv[1:]
    path = os.environ.get(SOCKET_ENV)
    status = run_in_worker(path, argv) if path else None
    if status is None:
        os.execv(sys.executable, [sys.executable, "-m", *argv])
    sys.exit(status)


if __name__ == "__main__":
    main()
