"""Hand a command to the worker named by $PIPELINE_WORKER_SOCKET and wait for its exit status.

`python -m pipeline_src CMD ...` does so itself when the variable is set (its __main__.py, before any
other import), and runs the command in-process when no worker answers;
`python -m pipeline_src.worker.client MODULE ARGS...` does the same for any `python -m MODULE ARGS...`.
Standard library only: this is what each job starts.

The client stays until the child ends: SIGTERM, SIGINT and SIGHUP sent to it (Snakemake cancelling a
job, SLURM ending one) go on to the child, and if the client itself dies the worker ends the child.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import struct
import sys

from pipeline_src.worker import SOCKET_ENV

FORWARDED = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


def request(argv: list[str]) -> bytes:
    payload = json.dumps({"argv": argv, "cwd": os.getcwd(), "env": dict(os.environ)}).encode()
    return struct.pack("!I", len(payload)) + payload


def run_in_worker(path: str, argv: list[str]) -> int | None:
    """The child's exit status, or None when no worker answers at `path` (nothing was run)."""
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
            return int(value)


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit("usage: python -m pipeline_src.worker.client MODULE [ARGS...]")
    argv = sys.argv[1:]
    path = os.environ.get(SOCKET_ENV)
    status = run_in_worker(path, argv) if path else None
    if status is None:
        os.execv(sys.executable, [sys.executable, "-m", *argv])
    sys.exit(status)


if __name__ == "__main__":
    main()
