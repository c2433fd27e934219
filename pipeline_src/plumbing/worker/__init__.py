"""Jobs that do not pay for Python's start-up: a worker process imports torch, timm and the other heavy
libraries once, then forks one child per job (server.py); a job's command line starts the small
client (client.py), which hands the worker its arguments, working directory, environment and its
stdin/stdout/stderr, and exits with the child's status. Without a worker the client runs the command
itself, exactly as before. The child imports pipeline_src after the fork, so an edited module is the
code that runs."""
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SOCKET_ENV = "PIPELINE_WORKER_SOCKET"
OFF_ENV = "PIPELINE_WORKER"  # "off" runs every job as its own process, as before the worker
PID_FILE = "worker.pid"  # beside the socket: the worker that will listen there, while it imports


def start(log_path) -> tuple[object, str] | None:
    """Start a worker for this workflow run and point the jobs at it ($PIPELINE_WORKER_SOCKET, which the
    jobs inherit); (process, socket path), or None when $PIPELINE_WORKER is "off". It listens once it has
    imported its libraries; jobs started before then wait for it."""
    if os.environ.get(OFF_ENV, "").lower() in ("off", "0", "no", "false"):
        return None
    try:
        folder = tempfile.mkdtemp(prefix="pw-")  # unix socket paths must stay short
        Path(log_path).parent.mkdir(parents=True, exist_ok=True)
        log = open(log_path, "a")
    except OSError as err:
        print(f"note: no start-up worker ({err}); each job starts its own Python", file=sys.stderr)
        return None
    path = os.path.join(folder, "worker.sock")
    with log:
        # its own session, so that a Ctrl-C to Snakemake's terminal reaches the jobs through their
        # clients, not the worker; once this process is gone, however that ended, it ends the jobs it
        # runs, exits and removes its folder
        proc = subprocess.Popen([sys.executable, "-m", "pipeline_src.plumbing.worker.server", "--socket", path,
                                 "--idle-exit", "3600", "--parent-pid", str(os.getpid()), "--own-folder"],
                                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
    # the jobs Snakemake starts while the worker is still importing wait for it (client.py)
    Path(folder, PID_FILE).write_text(str(proc.pid))
    os.environ[SOCKET_ENV] = path
    return proc, path


def stop(started) -> None:
    """End a worker start() gave; its socket and folder go with it."""
    if not started:
        return
    proc, path = started
    os.environ.pop(SOCKET_ENV, None)
    proc.terminate()
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    # the socket and worker.pid go with the folder (a worker killed above could not remove them itself)
    shutil.rmtree(os.path.dirname(path), ignore_errors=True)
