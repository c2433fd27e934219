"""The start-up worker (pipeline_src/plumbing/worker/): a command run through it gives the same output, exit
status and training numbers as run plainly; an edited module is the code that runs; without a worker the
command runs in-process; signals reach the job, and a job whose client was killed is ended."""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from pipeline_src.plumbing.worker import PID_FILE, SOCKET_ENV

REPO_ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "PYTHONPATH": str(REPO_ROOT),
       "TQDM_DISABLE": "1"}
ENV.pop(SOCKET_ENV, None)

SCRIPT = """import os, sys, time
print("out", sys.argv[1:], os.getcwd() == os.environ["EXPECT_CWD"], os.environ.get("MARK"))
print("err line", file=sys.stderr)
if sys.argv[1:] == ["sleep"]:
    open("child.pid", "w").write(str(os.getpid()))
    time.sleep(120)
sys.exit(int(sys.argv[1]) if sys.argv[1:] and sys.argv[1].isdigit() else 0)
"""


@pytest.fixture(scope="module")
def worker():
    """A real worker on a socket in a short temporary folder (unix socket paths are short)."""
    folder = tempfile.mkdtemp(prefix="pw-", dir="/tmp")
    path = os.path.join(folder, "w.sock")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_src.plumbing.worker.server", "--socket", path], cwd=REPO_ROOT,
                            env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not os.path.exists(path):
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.poll() is not None else "slow"
        time.sleep(0.1)
    yield path
    proc.terminate()
    proc.wait(timeout=30)
    assert not os.path.exists(path)  # it removes its socket
    os.rmdir(folder)


def client(cwd: Path, *args, socket_path=None, **kwargs) -> subprocess.CompletedProcess:
    env = {**ENV, "EXPECT_CWD": str(cwd), "MARK": "m1", **({SOCKET_ENV: socket_path} if socket_path else {})}
    return subprocess.run([sys.executable, "-m", "pipeline_src.plumbing.worker.client", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120, **kwargs)


def test_output_status_cwd_and_environment_are_the_plain_run_s(worker, tmp_path):
    (tmp_path / "job.py").write_text(SCRIPT)
    plain = client(tmp_path, "job", "3")
    through = client(tmp_path, "job", "3", socket_path=worker)
    assert plain.returncode == through.returncode == 3
    assert through.stdout == plain.stdout == "out ['3'] True m1\n"
    assert through.stderr == plain.stderr == "err line\n"


def test_an_edited_module_is_the_code_that_runs(worker, tmp_path):
    (tmp_path / "job.py").write_text(SCRIPT)
    assert client(tmp_path, "job", socket_path=worker).stdout.startswith("out ")
    (tmp_path / "job.py").write_text(SCRIPT.replace('print("out"', 'print("edited"'))
    assert client(tmp_path, "job", socket_path=worker).stdout.startswith("edited ")


def test_a_job_started_while_its_worker_imports_waits_for_it(tmp_path):
    """The worker listens only once it has imported torch and the rest; a job started before then runs
    through it, not in-process, and a job whose named worker is not running does not wait."""
    folder = Path(tempfile.mkdtemp(prefix="pw-", dir="/tmp"))
    path = str(folder / "w.sock")
    (tmp_path / "job.py").write_text("import os\nprint('through' if 'PIPELINE_WORKER_SOCKET' not in os.environ else 'here')\n")
    gone = subprocess.Popen(["true"])
    gone.wait()
    (folder / PID_FILE).write_text(str(gone.pid))
    started = time.monotonic()
    assert client(tmp_path, "job", socket_path=path).stdout == "here\n"
    assert time.monotonic() - started < 20
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_src.plumbing.worker.server", "--socket", path], cwd=REPO_ROOT,
                            env=ENV, stderr=subprocess.PIPE, text=True)
    (folder / PID_FILE).write_text(str(proc.pid))
    try:
        assert not os.path.exists(path)  # it is still importing
        early = client(tmp_path, "job", socket_path=path)
        assert early.stdout == "through\n", early.stderr
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    shutil.rmtree(folder)


def test_without_a_worker_the_command_runs_in_process(tmp_path):
    (tmp_path / "job.py").write_text(SCRIPT)
    (tmp_path / "stale.sock").write_text("")  # a socket path no worker listens on
    for socket_path in (None, str(tmp_path / "stale.sock"), str(tmp_path / "absent.sock")):
        done = client(tmp_path, "job", "4", socket_path=socket_path)
        assert (done.returncode, done.stdout) == (4, "out ['4'] True m1\n"), socket_path


def wait_for(path: Path, seconds: float = 60) -> str:
    deadline = time.time() + seconds
    while not path.exists() or not path.read_text():
        assert time.time() < deadline, f"{path} never appeared"
        time.sleep(0.05)
    return path.read_text()


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def sleeping_job(worker: str, tmp_path: Path) -> tuple[subprocess.Popen, int]:
    """A job that sleeps in the worker: (its client process, the worker's child running it)."""
    (tmp_path / "job.py").write_text(SCRIPT)
    env = {**ENV, "EXPECT_CWD": str(tmp_path), SOCKET_ENV: worker}
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_src.plumbing.worker.client", "job", "sleep"], cwd=tmp_path,
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    return proc, int(wait_for(tmp_path / "child.pid"))


def test_sigterm_to_the_client_reaches_the_job(worker, tmp_path):
    proc, child = sleeping_job(worker, tmp_path)
    assert child != proc.pid
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 128 + signal.SIGTERM  # as a shell reports a job killed by SIGTERM
    assert not alive(child)


def test_a_job_whose_client_was_killed_is_ended(worker, tmp_path):
    proc, child = sleeping_job(worker, tmp_path)
    proc.kill()
    proc.wait(timeout=30)
    deadline = time.time() + 30
    while alive(child):
        assert time.time() < deadline, "the orphaned job still runs"
        time.sleep(0.1)


def test_a_training_run_through_the_worker_has_the_plain_run_s_numbers(worker, tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text(yaml.safe_dump({
        "device": "cpu", "seeds": [0], "training": {"epochs": 2}, "results_dir": str(tmp_path / "results"),
        "datasets": {"digits": {"source": "digits"}}, "models": {"dnn3": {"arch": "dnn3", "hidden": 32}},
        "experiment_sets": {"vpn": {"kind": "vpn_joint", "datasets": ["digits"], "models": ["dnn3"],
                                    "methods": [{"label": "vpn", "name": "vpn", "generator": "dnn3",
                                                 "generator_hidden": 32}]}}}))
    py = [sys.executable, "-m", "pipeline_src"]
    data = tmp_path / "prepared"
    subprocess.run([*py, "prepare", "--params", str(params), "--dataset", "digits", "--out", str(data)], cwd=REPO_ROOT,
                   env=ENV, check=True, capture_output=True)
    records = []
    for name, extra in (("plain", {}), ("worker", {SOCKET_ENV: worker})):
        out = tmp_path / name
        done = subprocess.run([*py, "run", "--params", str(params), "--set", "vpn", "--run-id", "digits-dnn3-vpn-s0",
                               "--data", str(data), "--out", str(out), "--threads", "1"], cwd=REPO_ROOT,
                              env={**ENV, **extra}, capture_output=True, text=True)
        assert done.returncode == 0, done.stderr[-2000:]
        records.append(json.loads((out / "metrics.json").read_text()))
    plain, through = records
    assert through["evaluations"] == plain["evaluations"] and through["diagnostics"] == plain["diagnostics"]
    assert [h["train_loss"] for h in through["history"]] == [h["train_loss"] for h in plain["history"]]
    # proof that the job ran in the worker (a fallback would pass the checks above too): the forked job
    # finds torch imported, so its CPU before the first step is a small part of a fresh process's
    assert through["startup_cpu_seconds"] < 0.5 * plain["startup_cpu_seconds"]


def test_a_worker_leaves_when_the_snakemake_that_started_it_is_killed(tmp_path):
    """What onstart does, in a parent that is then killed too hard for onsuccess/onerror to run."""
    parent = subprocess.Popen([sys.executable, "-c", "import sys, time\nfrom pipeline_src.plumbing import worker\n"
                               f"print(worker.start({str(tmp_path / 'worker.log')!r})[1], flush=True)\ntime.sleep(300)"],
                              cwd=REPO_ROOT, env=ENV, stdout=subprocess.PIPE, text=True)
    path = parent.stdout.readline().strip()
    deadline = time.time() + 120
    while not os.path.exists(path):  # listening: its libraries are imported
        assert time.time() < deadline, (tmp_path / "worker.log").read_text()
        time.sleep(0.1)
    parent.kill()
    parent.wait(timeout=30)
    deadline = time.time() + 30
    while os.path.exists(os.path.dirname(path)):  # its socket, and the folder start() made for it
        assert time.time() < deadline, "the worker outlived its Snakemake, or left its folder behind"
        time.sleep(0.1)


def test_a_job_whose_worker_died_fails_and_ends(tmp_path):
    folder = tempfile.mkdtemp(prefix="pw-", dir="/tmp")
    path = os.path.join(folder, "w.sock")
    server = subprocess.Popen([sys.executable, "-m", "pipeline_src.plumbing.worker.server", "--socket", path], cwd=REPO_ROOT,
                              env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 120
    while not os.path.exists(path):
        assert server.poll() is None and time.time() < deadline
        time.sleep(0.1)
    proc, child = sleeping_job(path, tmp_path)
    server.kill()
    server.wait(timeout=30)
    assert proc.wait(timeout=30) == 1
    deadline = time.time() + 30
    while alive(child):
        assert time.time() < deadline, "the job outlived its worker"
        time.sleep(0.1)
    # read only now: the job holds the client's stderr open while it lives
    assert b"the job's worker exited before the job ended" in proc.stderr.read()
    shutil.rmtree(folder)  # a killed worker leaves its socket and PID_FILE there; stop() removes them


def as_a_rule_runs_it(tmp_path: Path, *args: str) -> list[str]:
    """The job's command line as a rule's shell line runs it: output and errors into its log."""
    return ["bash", "-c", f"{sys.executable} -m pipeline_src.plumbing.worker.client {' '.join(args)} > job.log 2>&1"]


def test_a_job_killed_by_a_signal_says_so_in_its_log(worker, tmp_path):
    """A plain process killed by SIGSEGV writes nothing to its log; through the worker, the child writes its
    Python stack (faulthandler) and the client names the signal."""
    (tmp_path / "job.py").write_text("import os, signal\nprint('started', flush=True)\nos.kill(os.getpid(), signal.SIGSEGV)\n")
    done = subprocess.run(as_a_rule_runs_it(tmp_path, "job"), cwd=tmp_path, env={**ENV, SOCKET_ENV: worker}, timeout=120)
    assert done.returncode == 128 + signal.SIGSEGV
    log = (tmp_path / "job.log").read_text()
    assert log.startswith("started\n") and "Fatal Python error: Segmentation fault" in log
    assert log.splitlines()[-1].startswith("error: the job (pid ")
    assert log.splitlines()[-1].endswith(") was killed by SIGSEGV (exit status 139)")


def test_a_job_ends_when_its_shell_is_killed(worker, tmp_path):
    """The client follows its parent, the job's shell: killed with SIGKILL (nothing can forward it), the
    job still ends, and its log says how."""
    (tmp_path / "job.py").write_text(SCRIPT)
    shell = subprocess.Popen(as_a_rule_runs_it(tmp_path, "job", "sleep"), cwd=tmp_path,
                             env={**ENV, "EXPECT_CWD": str(tmp_path), SOCKET_ENV: worker})
    child = int(wait_for(tmp_path / "child.pid"))
    shell.kill()
    shell.wait(timeout=30)
    deadline = time.time() + 30
    while alive(child):
        assert time.time() < deadline, "the job outlived its shell"
        time.sleep(0.1)
    deadline = time.time() + 30
    while "killed by SIGTERM" not in (tmp_path / "job.log").read_text():
        assert time.time() < deadline, (tmp_path / "job.log").read_text()
        time.sleep(0.1)


def test_a_hard_kill_of_the_snakemake_that_started_the_worker_ends_its_jobs(tmp_path):
    """What onstart does, then a job through the worker, then a kill -9 of the parent: the job, its client
    and its shell end, the worker exits and its /tmp/pw-* folder goes with it."""
    (tmp_path / "job.py").write_text(SCRIPT)
    parent = subprocess.Popen([sys.executable, "-c", "import subprocess, sys, time\nfrom pipeline_src.plumbing import worker\n"
                               f"print(worker.start({str(tmp_path / 'worker.log')!r})[1], flush=True)\n"
                               f"shell = subprocess.Popen({as_a_rule_runs_it(tmp_path, 'job', 'sleep')!r}, "
                               f"cwd={str(tmp_path)!r})\nprint(shell.pid, flush=True)\ntime.sleep(300)"],
                              cwd=REPO_ROOT, env={**ENV, "EXPECT_CWD": str(tmp_path)}, stdout=subprocess.PIPE, text=True)
    path, shell = parent.stdout.readline().strip(), int(parent.stdout.readline())
    child = int(wait_for(tmp_path / "child.pid", 120))  # the job runs in the worker
    parent.kill()
    parent.wait(timeout=30)
    deadline = time.time() + 30
    while alive(child) or os.path.exists(os.path.dirname(path)) or not zombie_or_gone(shell):
        assert time.time() < deadline, (f"after the kill: job alive {alive(child)}, shell alive {not zombie_or_gone(shell)}, "
                                        f"folder left {os.path.exists(os.path.dirname(path))}")
        time.sleep(0.1)
    assert "killed by SIGTERM" in (tmp_path / "job.log").read_text()


def zombie_or_gone(pid: int) -> bool:
    """A process whose parent was killed is reaped by init, or stays a zombie in a container without one."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
    except OSError:
        return True
