"""`python -m pipeline_src.plumbing.worker.server --socket PATH [--idle-exit S]`: import the heavy libraries once,
then fork one child per client (client.py) and report its exit status.

A child takes the client's stdin/stdout/stderr (passed over the socket), working directory, environment
and arguments, and runs `python -m MODULE ARGS` in-process (runpy), importing pipeline_src afresh: the
worker itself has imported none of it but this package, so edits to the package apply to the next job.
One thread only: the loop waits on the listening socket and the clients' connections, and reaps
children between waits (forking a process with other threads running is unsafe).

A client's connection closing before its child has ended means the client was killed: the child gets
SIGTERM, then SIGKILL after GRACE_S. A child killed by a signal is reported to its client as such (which
says so in the job's log), and a child that crashes in C (SIGSEGV) first writes its Python stack there.
With --idle-exit, the worker exits after that many seconds with no job running. With --parent-pid, once
that process is gone (a Snakemake killed too hard to stop it) its jobs are ended the same way, since no
one counts their results any more, and the worker exits once they have; it removes its socket when it
exits, and with --own-folder the socket's folder too.
"""
from __future__ import annotations

import argparse
import contextlib
import faulthandler
import importlib
import json
import os
import runpy
import selectors
import signal
import socket
import struct
import sys
import time

from pipeline_src.plumbing.worker import PID_FILE, SOCKET_ENV

# What a training job imports beyond pipeline_src, heaviest first (benchmarks/bench_startup.py
# measures the effect): importing them here is the start-up every job would otherwise pay.
# matplotlib.pyplot (0.5 s of CPU) is for the jobs that draw: VPN evaluations, set tables, the audit.
PRELOAD = ("torch", "timm", "torchvision", "mlflow", "mlflow.store.tracking.sqlalchemy_store", "pandas",
           "matplotlib.pyplot", "seaborn", "scipy.stats", "numpy", "PIL.Image", "yaml", "jsonschema", "filelock",
           "tenacity", "tqdm")
GRACE_S = 10.0
MAX_REQUEST = 64 << 20


def preload(modules=PRELOAD) -> list[str]:
    """Import what can be imported; a missing optional library is the child's concern, not the worker's."""
    loaded = []
    for name in modules:
        try:
            importlib.import_module(name)
            loaded.append(name)
        except ImportError:
            pass
    return loaded


def read_request(conn: socket.socket) -> tuple[dict, list[int]]:
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 3)
    if len(data) < 4:
        raise ValueError("short request")
    size = struct.unpack("!I", data[:4])[0]
    if size > MAX_REQUEST:
        raise ValueError(f"request of {size} bytes")
    body = data[4:]
    while len(body) < size:
        chunk = conn.recv(size - len(body))
        if not chunk:
            raise ValueError("request cut short")
        body += chunk
    return json.loads(body), fds


def _end_with_worker() -> None:
    """Linux: SIGTERM to this child if the worker dies, whose client then reports the job failed; a job
    must not go on writing outputs that Snakemake has already counted as failed."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:  # a real-time signal has no name
        return f"signal-{signum}"


def run_child(request: dict, fds: list[int]) -> None:
    """In the forked child: become the job, run it, and never return."""
    status = 1
    try:
        for signum in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGCHLD):
            signal.signal(signum, signal.SIG_DFL)
        _end_with_worker()
        for target, fd in enumerate(fds):
            os.dup2(fd, target)
            os.close(fd)
        faulthandler.enable()  # a crash in C (SIGSEGV, SIGBUS, ...) writes the Python stack to the job's log
        os.chdir(request["cwd"])
        os.environ.clear()
        os.environ.update(request["env"])
        os.environ.pop(SOCKET_ENV, None)  # the child runs the command; its own subprocesses start plainly
        module, *args = request["argv"]
        sys.argv = [module, *args]
        sys.path[0] = request["cwd"]  # as `python -m` puts the working directory first
        runpy.run_module(module, run_name="__main__", alter_sys=True)
        status = 0
    except SystemExit as done:
        code = done.code
        status = code if isinstance(code, int) else (0 if code is None else 1)
        if not isinstance(code, int) and code is not None:
            print(code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 - the child reports every failure as a plain process would
        import traceback

        traceback.print_exc()
        status = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except (OSError, ValueError):
                pass
        os._exit(status)


class Worker:
    def __init__(self, path: str, idle_exit: float | None, parent_pid: int | None = None):
        self.path, self.idle_exit, self.parent_pid = path, idle_exit, parent_pid
        # started by that process (worker.start): it is gone once this one is someone else's child, even
        # while it waits unreaped as a zombie, and a PID reused since cannot pass for it
        self.parent_is_ppid = parent_pid == os.getppid()
        self.selector = selectors.DefaultSelector()
        self.jobs: dict[int, socket.socket] = {}  # child pid -> its client's connection
        self.killing: dict[int, float] = {}  # child pid -> when it was sent SIGTERM
        self.idle_since = time.monotonic()

    def serve(self) -> None:
        if os.path.exists(self.path):
            os.unlink(self.path)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(self.path)
        listener.listen(64)
        self.listener = listener
        self.selector.register(listener, selectors.EVENT_READ)
        try:
            while not (self._idle_too_long() or self._orphaned()):
                for key, _ in self.selector.select(timeout=0.05):
                    if key.fileobj is listener:
                        self._accept()
                    else:
                        self._client_spoke(key.fileobj)
                self._reap()
                self._escalate()
        finally:
            listener.close()
            if os.path.exists(self.path):
                os.unlink(self.path)

    def _idle_too_long(self) -> bool:
        if self.jobs or self.idle_exit is None:
            self.idle_since = time.monotonic()
            return False
        return time.monotonic() - self.idle_since > self.idle_exit

    def _orphaned(self) -> bool:
        """The --parent-pid process is gone: its jobs are stopped (nothing counts their results, and a rerun
        would train the same runs beside them); True once they have all ended."""
        if self.parent_pid is None or not self._parent_gone():
            return False
        for pid in self.jobs:
            self._stop(pid)
        return not self.jobs

    def _parent_gone(self) -> bool:
        if self.parent_is_ppid:
            return os.getppid() != self.parent_pid
        try:
            os.kill(self.parent_pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            pass
        return False

    def _accept(self) -> None:
        conn, _ = self.listener.accept()
        try:
            request, fds = read_request(conn)
        except (OSError, ValueError) as err:
            print(f"worker: refused a request: {err}", file=sys.stderr)
            conn.close()
            return
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            self.listener.close()
            for other in self.jobs.values():
                other.close()
            conn.close()
            run_child(request, fds)
        for fd in fds:
            os.close(fd)
        print(f"worker: job {pid}: python -m {' '.join(request['argv'][:2])}", file=sys.stderr, flush=True)
        self.jobs[pid] = conn
        self.selector.register(conn, selectors.EVENT_READ, pid)
        try:
            conn.sendall(f"pid {pid}\n".encode())
        except OSError:
            self._stop(pid)

    def _client_spoke(self, conn: socket.socket) -> None:
        pid = self.selector.get_key(conn).data
        try:
            data = conn.recv(4096)
        except OSError:
            data = b""
        if not data:  # the client is gone: so must its job be
            self.selector.unregister(conn)
            self._stop(pid)
            return
        for line in data.decode(errors="replace").splitlines():
            kind, _, value = line.partition(" ")
            if kind == "signal" and value.isdigit():
                self._signal(pid, int(value))

    def _signal(self, pid: int, signum: int) -> None:
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    def _stop(self, pid: int) -> None:
        if pid not in self.killing:
            self.killing[pid] = time.monotonic()
            self._signal(pid, signal.SIGTERM)

    def _escalate(self) -> None:
        for pid, since in list(self.killing.items()):
            if time.monotonic() - since > GRACE_S:
                self._signal(pid, signal.SIGKILL)

    def _reap(self) -> None:
        while self.jobs:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            conn = self.jobs.pop(pid, None)
            self.killing.pop(pid, None)
            if conn is None:
                continue
            code = os.waitstatus_to_exitcode(status)
            # killed by a signal: the status as a shell reports it, and the signal's name for the job's log
            reply = f"exit {128 - code} {_signal_name(-code)}" if code < 0 else f"exit {code}"
            try:
                conn.sendall(f"{reply}\n".encode())
            except OSError:
                pass
            try:
                self.selector.unregister(conn)
            except (KeyError, ValueError):
                pass
            conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--socket", required=True, help="the unix socket to listen on")
    parser.add_argument("--idle-exit", type=float, help="exit after this many seconds with no job")
    parser.add_argument("--parent-pid", type=int, help="end the jobs and exit when this process has gone")
    parser.add_argument("--own-folder", action="store_true", help="remove the socket's folder on exit (it was "
                        "made for this worker)")
    args = parser.parse_args()
    if len(os.fsencode(args.socket)) > 100:
        sys.exit(f"error: socket path {args.socket} is longer than a unix socket allows (100 bytes)")
    loaded = preload()
    print(f"worker: {os.getpid()} on {args.socket}, preloaded {', '.join(loaded)}", file=sys.stderr, flush=True)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        Worker(args.socket, args.idle_exit, args.parent_pid).serve()
    finally:
        folder = os.path.dirname(args.socket)
        with contextlib.suppress(OSError):  # the name start() gave the jobs to wait for (__init__.py)
            os.unlink(os.path.join(folder, PID_FILE))
        if args.own_folder:  # a Snakemake killed too hard to stop() this worker leaves no empty folder behind
            with contextlib.suppress(OSError):
                os.rmdir(folder)


if __name__ == "__main__":
    main()
