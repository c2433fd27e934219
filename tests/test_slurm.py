"""The slurm profile on a real one-node SLURM cluster started on this machine.

A tiny experiment set runs through sbatch and gives the same table as a local run; a training job
cancelled with scancel after its first checkpoint resumes from it when Snakemake runs again, and
ends with the numbers of an uninterrupted run. Needs root and the Debian packages slurmctld, slurmd,
slurm-client and munge; everything the cluster writes stays in a temporary folder.
"""
import copy
import csv
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from pipeline_src.spec.config import REPO_ROOT

pytestmark = pytest.mark.slurm

VENV_BIN = Path(os.sys.executable).parent
SNAKEMAKE = str(VENV_BIN / "snakemake")
SLURM_PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "srun", "squeue", "scancel", "sinfo")
PARTITION = "pipetest"
STRAY_MARK = "PIPETEST_SLURM_ROOT"
RESUME_RUN = "digits-wide-baseline-s0"
RESUME_EPOCHS = 5

PARAMS = {
    "scale": "embedded_default",
    "device": "cpu",  # the test cluster has no GPU: device cpu makes the train jobs ask for none
    "seeds": [0, 1],
    # one CPU per training job so two run side by side on a 2-core node; the same thread count as
    # the local run, so the numbers match exactly
    "cluster": {"train_gpus": 1, "train_mem_mb": 1000, "train_runtime_min": 10, "train_cpus": 1},
    "training": {"epochs": 2, "batch_size": 64, "eval_batch_size": 128},
    "datasets": {"digits": {"source": "digits"}},
    "models": {"sr": {"arch": "sr"}, "dnn3": {"arch": "dnn3", "hidden": 32},
               "wide": {"arch": "dnn3", "hidden": 1024}},
    "experiment_sets": {
        "baseline": {"datasets": ["digits"], "models": ["sr", "dnn3"],
                     "methods": [{"label": "baseline", "name": "baseline"}]},
        # one run slow enough (a second or more per epoch) to be cancelled between two checkpoints
        "resume": {"kind": "baseline", "datasets": ["digits"], "models": ["wide"], "seeds": [0],
                   "training": {"epochs": RESUME_EPOCHS, "batch_size": 32},
                   "methods": [{"label": "baseline", "name": "baseline"}]},
    },
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _missing_programs() -> list[str]:
    search = f"{os.environ.get('PATH', '')}:/usr/sbin:/sbin:/usr/bin"
    return [name for name in SLURM_PROGRAMS if shutil.which(name, path=search) is None]


def _wait_for(condition, timeout: float, what: str, interval: float = 0.5):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(interval)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _slurm_conf(root: Path, ctld_port: int, slurmd_port: int) -> str:
    # `slurmd -C` prints this machine's node line (CPUs, sockets, cores, RealMemory) as slurmd sees it
    node_line = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, check=True).stdout.splitlines()[0]
    host = re.match(r"NodeName=(\S+)", node_line).group(1)
    return f"""\
ClusterName=pipetest
SlurmctldHost={host}(127.0.0.1)
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={root}/munge/munge.socket
SlurmUser=root
SlurmdUser=root
StateSaveLocation={root}/state
SlurmdSpoolDir={root}/spool
SlurmctldPidFile={root}/slurmctld.pid
SlurmdPidFile={root}/slurmd.pid
SlurmctldLogFile={root}/slurmctld.log
SlurmdLogFile={root}/slurmd.log
# no cgroups in the container: processes tracked through /proc, no task binding
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
# no accounting database: sacct cannot answer, squeue must (see the profile's slurm-status-command)
AccountingStorageType=accounting_storage/none
MpiDefault=none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core_Memory
SchedulerType=sched/builtin
# finished jobs stay visible to squeue for 10 minutes (the plugin's status queries need >= 120 s)
MinJobAge=600
KillWait=5
ReturnToService=2
{node_line} NodeAddr=127.0.0.1 State=UNKNOWN
PartitionName={PARTITION} Nodes={host} Default=YES MaxTime=INFINITE State=UP
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """munged, slurmctld and slurmd of a one-node cluster, all configured inside a temporary folder."""
    if os.geteuid() != 0:
        pytest.skip("the SLURM test cluster needs root (slurmd runs jobs as root here)")
    missing = _missing_programs()
    if missing:
        pytest.skip(f"SLURM test cluster: {', '.join(missing)} not found; "
                    "install the Debian packages slurmctld slurmd slurm-client munge")

    root = tmp_path_factory.mktemp("slurm")
    for sub in ("munge", "state", "spool", "bin"):
        (root / sub).mkdir(mode=0o700)
    key = root / "munge" / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = root / "slurm.conf"
    conf.write_text(_slurm_conf(root, _free_port(), _free_port()))
    # The plugin's job step drops every SLURM_* variable before its nested `srun`; on a real node srun
    # then reads /etc/slurm/slurm.conf. Ours lives here, so the jobs get an srun that knows where.
    srun = root / "bin" / "srun"
    srun.write_text(f'#!/bin/sh\nexport SLURM_CONF={conf}\nexec {shutil.which("srun")} "$@"\n')
    srun.chmod(0o755)

    # STRAY_MARK reaches every process the cluster starts (sbatch exports the environment), so the
    # teardown can find a job step that escaped its job
    env = {**os.environ, "SLURM_CONF": str(conf), "SLURM_PARTITION": PARTITION, STRAY_MARK: str(root),
           "PATH": f"{root / 'bin'}:{VENV_BIN}:{os.environ['PATH']}:/usr/sbin:/sbin"}
    env.pop("SLURM_ACCOUNT", None)
    logs = {name: open(root / f"{name}.out", "w") for name in ("munged", "slurmctld", "slurmd")}
    procs = []

    def start(name, *args):
        procs.append(subprocess.Popen([name, *args], env=env, stdout=logs[name], stderr=subprocess.STDOUT))

    try:
        munge = root / "munge"
        start("munged", "--foreground", "--force", f"--key-file={key}", f"--socket={munge}/munge.socket",
              f"--pid-file={munge}/munged.pid", f"--log-file={munge}/munged.log", f"--seed-file={munge}/munged.seed")
        _wait_for((munge / "munge.socket").exists, 15, "munged's socket")
        start("slurmctld", "-D", "-i", "-f", str(conf))
        start("slurmd", "-D", "-f", str(conf))

        def node_idle():
            out = subprocess.run(["sinfo", "--noheader", "--format=%T"], env=env, capture_output=True, text=True)
            return out.stdout.strip() == "idle"

        _wait_for(node_idle, 60, "the node to be idle in sinfo")
        yield {"env": env, "root": root}
    except TimeoutError as err:
        daemon_logs = "\n".join(f"--- {p.name}\n{p.read_text()[-2000:]}" for p in sorted(root.glob("*.out")))
        raise AssertionError(f"{err}\n{daemon_logs}") from None
    finally:
        # nothing of ours may outlive the test: cancel leftover jobs, let their steps end, then the daemons
        subprocess.run(["scancel", "--partition", PARTITION], env=env, capture_output=True)
        try:
            _wait_for(lambda: not _jobs(env, "RUNNING,PENDING,COMPLETING,SUSPENDED"), 30, "jobs to end")
        except TimeoutError:
            pass
        for proc in reversed(procs):
            _stop(proc)
        _kill_strays(str(root))
        for log in logs.values():
            log.close()


def _marked(root: str) -> dict[int, str]:
    """pid -> command line of every process but this one that carries this cluster's mark."""
    mark, found = f"{STRAY_MARK}={root}".encode(), {}
    for proc in Path("/proc").glob("[0-9]*"):
        try:
            if int(proc.name) != os.getpid() and mark in (proc / "environ").read_bytes().split(b"\0"):
                found[int(proc.name)] = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            pass  # gone meanwhile, or not ours to read
    return found


def _kill_strays(root: str) -> None:
    """SIGKILL what still carries the mark. proctrack/linuxproc follows parent links only, so a job
    step whose parent died first (reparented to init) escapes scancel; cgroup tracking would not."""
    for pid in _marked(root):
        try:
            os.kill(pid, signal.SIGKILL)
        except OSError:
            pass


def _jobs(env, states="all") -> dict[str, dict]:
    """SLURM job id -> state, CPUs, memory, time limit, GRES and comment (Snakemake's rule and wildcards)."""
    out = subprocess.run(["squeue", "--noheader", f"--states={states}", "--format=%i|%T|%C|%m|%l|%b|%k"],
                         env=env, capture_output=True, text=True)
    if out.returncode != 0:
        return {}
    keys = ("state", "cpus", "memory", "time_limit", "gres", "comment")
    return {line.split("|")[0]: dict(zip(keys, line.split("|")[1:])) for line in out.stdout.splitlines() if line}


def _write_params(path: Path, results_dir: Path) -> Path:
    params = copy.deepcopy(PARAMS)
    params["results_dir"] = str(results_dir)
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def _targets(results: Path) -> dict[str, Path]:
    return {"table": results / "tables" / "baseline.csv",
            "resume": results / "runs" / "resume" / RESUME_RUN / "metrics.json"}


def _snakemake(*args, env, check=True):
    out = subprocess.run([SNAKEMAKE, *args], capture_output=True, text=True, cwd=REPO_ROOT, env=env)
    if check and out.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def _slurm_args(cluster, tmp: Path, *extra) -> list[str]:
    # the status polling of the profile suits jobs of hours; seconds here
    return ["--workflow-profile", "workflow/profiles/slurm", "--slurm-init-seconds-before-status-checks", "1",
            "--seconds-between-status-checks", "1", "--slurm-logdir", str(tmp / "slurm_logs"),
            "--slurm-keep-successful-logs", *extra, "--configfile", str(tmp / "params.yaml")]


def _submitted(log: str) -> dict[str, str]:
    """SLURM job id -> rule, from Snakemake's 'Job N has been submitted with SLURM jobid X (log: .../rule_R/...)'."""
    return dict(re.findall(r"submitted with SLURM jobid (\d+) \(log: \S*/rule_(\w+)/", log))


def _top1_table(path: Path) -> dict[tuple, tuple]:
    with open(path, newline="") as f:
        return {(r["dataset"], r["model"], r["method"], r["eval_mode"]): (r["n_seeds"], r["top1_mean"], r["top1_std"])
                for r in csv.DictReader(f)}


def _numbers(metrics_path: Path) -> dict:
    metrics = json.loads(metrics_path.read_text())
    return {"evaluations": metrics["evaluations"],
            "history": [(h["epoch"], h["train_loss"], h["train_top1"]) for h in metrics["history"]]}


@pytest.fixture(scope="module")
def local_results(tmp_path_factory):
    """The same params run on this machine with `--cores 2`: the numbers the cluster runs must match.

    It runs in the background while the cluster works (the cluster runs mostly wait on the status
    polls); calling the fixture's value waits for it and returns its results folder."""
    tmp = tmp_path_factory.mktemp("local")
    results = tmp / "results"
    params = _write_params(tmp / "params.yaml", results)
    env = {**os.environ, "PATH": f"{VENV_BIN}:{os.environ['PATH']}"}
    proc = subprocess.Popen([SNAKEMAKE, *map(str, _targets(results).values()), "--cores", "2", "--configfile",
                             str(params)], cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)

    log = []

    def finished() -> Path:
        if not log:
            log.append(proc.communicate(timeout=600)[0])
        assert proc.returncode == 0, f"the local run failed:\n{log[0][-4000:]}"
        return results

    yield finished
    _stop(proc)


@pytest.fixture(scope="module")
def slurm_dir(tmp_path_factory):
    """One results folder for both cluster tests: the second finds the data the first prepared."""
    tmp = tmp_path_factory.mktemp("on_slurm")
    _write_params(tmp / "params.yaml", tmp / "results")
    return tmp


def test_tiny_set_runs_through_sbatch_and_matches_the_local_table(local_results, cluster, slurm_dir):
    env = cluster["env"]
    table = _targets(slurm_dir / "results")["table"]
    out = _snakemake(str(table), *_slurm_args(cluster, slurm_dir), env=env)

    submitted = _submitted(out.stdout + out.stderr)
    rules = sorted(submitted.values())
    assert rules.count("train") == 4 and rules.count("prepare_data") == 1, rules
    assert not {"init_tracking", "track_set", "aggregate_set"} & set(rules)  # local rules: on the submit host
    jobs = _jobs(env)
    for job_id, rule in submitted.items():
        assert jobs[job_id]["state"] == "COMPLETED", (job_id, jobs.get(job_id))
        if rule == "train":  # the params' cluster section reached sbatch; device cpu asked for no GPU
            assert (jobs[job_id]["cpus"], jobs[job_id]["memory"], jobs[job_id]["time_limit"]) == ("1", "1000M", "10:00")
            assert jobs[job_id]["gres"] == "N/A"
    print(f"\nSLURM jobs: {len(submitted)} ({', '.join(f'{r} {rules.count(r)}' for r in sorted(set(rules)))})")

    expected = _top1_table(_targets(local_results())["table"])
    assert len(expected) == 2
    assert _top1_table(table) == expected


def test_cancelled_training_job_resumes_from_its_checkpoint(local_results, cluster, slurm_dir):
    env = cluster["env"]
    target = _targets(slurm_dir / "results")["resume"]
    checkpoint = target.parent / "checkpoint.pt"
    first = subprocess.Popen([SNAKEMAKE, str(target), *_slurm_args(cluster, slurm_dir, "--retries", "0")],
                             cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        _wait_for(lambda: checkpoint.exists() or first.poll() is not None, 180, "the first checkpoint", 0.1)
        running = [i for i, job in _jobs(env, "RUNNING").items() if job["comment"].endswith(f"_resume_{RESUME_RUN}")]
        assert running, f"the training job was not running when its first checkpoint appeared: {_jobs(env)}"
        steps = [cmd for cmd in _marked(str(cluster["root"])).values() if "--target-jobs" in cmd]
        assert steps, "the job step does not carry the mark the teardown finds strays by"
        subprocess.run(["scancel", *running], env=env, check=True)
        first_log, _ = first.communicate(timeout=180)
    finally:
        _stop(first)
    assert first.returncode != 0, first_log[-3000:]
    assert _jobs(env)[running[0]]["state"] == "CANCELLED"
    assert checkpoint.exists() and not target.exists()

    second = _snakemake(str(target), *_slurm_args(cluster, slurm_dir), env=env)
    resubmitted = _submitted(second.stdout + second.stderr)
    assert list(resubmitted.values()).count("train") == 1 and running[0] not in resubmitted
    resumed = re.search(r"resuming from \S+ after epoch (\d+)", (target.parent / "train.log").read_text())
    assert resumed, "the rerun started from scratch instead of the checkpoint"
    assert 1 <= int(resumed.group(1)) < RESUME_EPOCHS
    assert not checkpoint.exists()
    assert _numbers(target) == _numbers(_targets(local_results())["resume"])
    print(f"\ncancelled SLURM job {running[0]} after epoch {resumed.group(1)}; "
          f"job {next(iter(resubmitted))} resumed and finished")
