"""The start-up worker, before and after, in one session on one machine (absolute times differ between
machines, so read the ratios):

- job: CPU before the first training step of one-epoch digits runs (softmax regression with optimal-Q
  noise, DNN3 with a VPN generator, a 2-block timm ViT), as a plain process and through a worker, beside
  the CPU of `python -c "import torch"`. Through the worker it is the forked child's CPU plus all of the
  client's (the job's own process, which only waits);
- workflow: `snakemake --cores 2` from an empty results folder on a small study (--runs training runs
  of 1 epoch on the digits, and their tables and audit), with PIPELINE_WORKER=off and on, alternated:
  wall time, and the Snakemake process's own CPU per job.

    .venv/bin/python benchmarks/bench_worker.py [--repeats 3] [--runs 24]
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

from bench_startup import JOB_PARAMS  # the same three jobs bench_startup.py times
from pipeline_src.spec.config import REPO_ROOT
from pipeline_src.plumbing.worker import OFF_ENV, SOCKET_ENV

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TQDM_DISABLE": "1"}
ENV["PIPELINE_RESULTS_ANYWHERE"] = "1"  # results go to a temporary folder, outside the project
ENV.pop(SOCKET_ENV, None)
# Snakemake's own CPU, read in its process as it exits (its children's CPU is not in RUSAGE_SELF)
SNAKEMAKE_SELF_CPU = """import atexit, resource, sys
from snakemake.cli import main
def report():
    usage = resource.getrusage(resource.RUSAGE_SELF)
    print(f"SNAKEMAKE_SELF_CPU {usage.ru_utime + usage.ru_stime}", file=sys.stderr)
atexit.register(report)
sys.argv = ["snakemake", *sys.argv[1:]]
main()
"""



def cpu_of(cmd: list[str], env: dict, cwd=REPO_ROOT) -> tuple[float, float, str]:
    """(wall seconds, CPU seconds of the command's process tree as waited for here, stderr)."""
    before, started = os.times(), time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=env, check=True, capture_output=True, text=True)
    after = os.times()
    cpu = (after.children_user - before.children_user) + (after.children_system - before.children_system)
    return time.perf_counter() - started, cpu, done.stderr


def start_worker(folder: Path) -> tuple[subprocess.Popen, str]:
    path = str(folder / "w.sock")
    proc = subprocess.Popen([sys.executable, "-m", "pipeline_src.plumbing.worker.server", "--socket", path], cwd=REPO_ROOT,
                            env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    while not os.path.exists(path):
        if proc.poll() is not None:
            sys.exit("the worker did not start")
        time.sleep(0.1)
    return proc, path


def study(runs: int) -> dict:
    """A study of `runs` one-epoch digits runs: DNN3 baselines and NoisyNN runs over seeds."""
    seeds = list(range(max(1, runs // 2)))
    return {
        "scale": "embedded_default", "device": "cpu", "seeds": seeds,
        "training": {"epochs": 1, "batch_size": 64, "eval_batch_size": 128},
        "datasets": {"digits": {"source": "digits"}}, "models": {"dnn3": {"arch": "dnn3", "hidden": 32}},
        "experiment_sets": {
            "baseline": {"datasets": ["digits"], "models": ["dnn3"], "methods": [{"label": "baseline", "name": "baseline"}]},
            "noisynn_main": {"datasets": ["digits"], "models": ["dnn3"],
                             "methods": [{"label": "shift", "name": "noisynn", "apply_at": "both",
                                          "noise": {"kind": "circular_shift", "strength": 0.3}}]}},
    }


def job_startup(tmp: Path, repeats: int) -> None:
    torch_cpu = statistics.median(cpu_of([sys.executable, "-c", "import torch"], ENV)[1] for _ in range(repeats))
    print(f"import torch alone: {torch_cpu:.2f} s CPU (median of {repeats})")
    results = tmp / "results"
    params = tmp / "jobs.yaml"
    params.write_text(yaml.safe_dump({**JOB_PARAMS, "results_dir": str(results)}))
    py = [sys.executable, "-m", "pipeline_src"]
    data = results / "prepared" / "digits"
    subprocess.run([*py, "prepare", "--params", str(params), "--dataset", "digits", "--out", str(data)],
                   cwd=REPO_ROOT, env=ENV, check=True, capture_output=True)
    worker, path = start_worker(tmp)
    try:
        for experiment_set, run_id in [("noisy", "digits-sr-q-s0"), ("vpn", "digits-dnn3-vpn-s0"), ("noisy", "digits-vit-q-s0")]:
            row = {}
            for mode, env in (("plain", ENV), ("worker", {**ENV, SOCKET_ENV: path})):
                startup = []
                for repeat in range(repeats):
                    out = tmp / "runs" / mode / f"{run_id}-{repeat}"
                    _, client_cpu, _ = cpu_of([*py, "train", "--params", str(params), "--set", experiment_set,
                                               "--run-id", run_id, "--data", str(data), "--model",
                                               str(out / "model.pt"), "--threads", "1"], env)
                    child = json.loads((out / "trained.json").read_text())["startup_cpu_seconds"]
                    # plain: the client is the job, and its CPU includes the start-up already
                    startup.append(child if mode == "plain" else child + client_cpu)
                row[mode] = statistics.median(startup)
            print(f"job {run_id}: CPU before the first step {row['plain']:.2f} s plain "
                  f"({row['plain'] / torch_cpu:.2f}x import torch), {row['worker']:.2f} s through the worker "
                  f"({row['worker'] / torch_cpu:.2f}x) (median of {repeats})")
    finally:
        worker.terminate()
        worker.wait(timeout=30)


def workflow(tmp: Path, repeats: int, runs: int) -> None:
    timings = {"off": [], "on": []}
    for repeat in range(repeats):
        for mode in ("off", "on"):
            results = tmp / f"wf-{mode}-{repeat}"
            params = tmp / f"wf-{mode}-{repeat}.yaml"
            params.write_text(yaml.safe_dump({**study(runs), "results_dir": str(results)}))
            env = {**ENV, OFF_ENV: mode}
            wall, _, err = cpu_of([sys.executable, "-c", SNAKEMAKE_SELF_CPU, "--cores", "2", "--configfile",
                                   str(params)], env)
            jobs = int(next(line.split()[0] for line in reversed(err.splitlines()) if "steps (100%) done" in line))
            own = float(next(line.split()[1] for line in err.splitlines() if line.startswith("SNAKEMAKE_SELF_CPU")))
            timings[mode].append((wall, own / jobs, jobs))
    for mode, rows in timings.items():
        print(f"workflow, worker {mode}: {rows[0][2]} jobs, median wall {statistics.median(r[0] for r in rows):.1f} s, "
              f"Snakemake's own CPU {statistics.median(r[1] for r in rows):.3f} s per job (over {repeats})")
    off, on = (statistics.median(r[0] for r in timings[m]) for m in ("off", "on"))
    print(f"workflow wall with the worker / without: {on / off:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--runs", type=int, default=24, help="training runs in the workflow study")
    parser.add_argument("--skip-workflow", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bw-", dir="/tmp") as tmp:
        job_startup(Path(tmp), args.repeats)
        if not args.skip_workflow:
            workflow(Path(tmp), args.repeats, args.runs)


if __name__ == "__main__":
    main()
