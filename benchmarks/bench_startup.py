"""Start-up costs: building the DAG (`snakemake -n`) and a training job's CPU before its first step.

- DAG: `snakemake -n` on params/default.yaml into an empty results folder, after one dry run has
  filled the preflight's model-check cache (that first dry run is reported too);
- job: `startup_cpu_seconds` of one-epoch runs on the 8x8 digits (softmax regression with optimal-Q
  noise, DNN3 with a VPN generator, a 2-block timm ViT), beside the CPU of `import torch` alone.

    .venv/bin/python benchmarks/bench_startup.py [--repeats 3]
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

from pipeline_src.spec.config import REPO_ROOT

BIN = Path(sys.executable).parent
ENV = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}", "TQDM_DISABLE": "1"}
ENV["PIPELINE_RESULTS_ANYWHERE"] = "1"  # results go to a temporary folder, outside the project
JOB_PARAMS = {
    "device": "cpu", "seeds": [0], "training": {"epochs": 1},
    "datasets": {"digits": {"source": "digits"}},
    "models": {"sr": {"arch": "sr"}, "dnn3": {"arch": "dnn3", "hidden": 64},
               "vit": {"arch": "vit_tiny_patch16_224", "small_stem": True,
                       "timm_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2}}},
    "experiment_sets": {
        "noisy": {"datasets": ["digits"], "models": ["sr", "vit"],
                  "methods": [{"label": "q", "name": "noisynn", "noise": {"kind": "optimal_q"}}]},
        "vpn": {"kind": "vpn_joint", "datasets": ["digits"], "models": ["dnn3"],
                "methods": [{"label": "vpn", "name": "vpn", "generator": "dnn3", "generator_hidden": 64}]},
    },
}


def timed(cmd: list[str]) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the children) of one command."""
    before, started = os.times(), time.perf_counter()
    subprocess.run(cmd, cwd=REPO_ROOT, env=ENV, check=True, capture_output=True)
    after = os.times()
    return time.perf_counter() - started, (after.children_user - before.children_user) + (
        after.children_system - before.children_system)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = Path(tmp) / "results"
        dry = [str(BIN / "snakemake"), "-n", "--cores", "2", "--config", f"results_dir={results}"]
        first = timed(dry)
        warm = [timed(dry) for _ in range(args.repeats)]
        print(f"snakemake -n, params/default.yaml: first {first[0]:.2f} s wall (model check in a subprocess); "
              f"then median {statistics.median(w for w, _ in warm):.2f} s wall, "
              f"{statistics.median(c for _, c in warm):.2f} s CPU over {args.repeats}")

        params = {**JOB_PARAMS, "results_dir": str(results)}
        path = Path(tmp) / "jobs.yaml"
        path.write_text(yaml.safe_dump(params))
        py = [sys.executable, "-m", "pipeline_src"]
        data = results / "prepared" / "digits"
        subprocess.run([*py, "prepare", "--params", str(path), "--dataset", "digits", "--out", str(data)],
                       cwd=REPO_ROOT, env=ENV, check=True, capture_output=True)
        torch_cpu = statistics.median(timed([sys.executable, "-c", "import torch"])[1] for _ in range(args.repeats))
        print(f"import torch alone: {torch_cpu:.2f} s CPU (median of {args.repeats})")
        exit_cpu = statistics.median(
            timed([sys.executable, "-c", "import torch, torch._dynamo"])[1]
            - timed([sys.executable, "-c", "import torch, torch._dynamo, os; os._exit(0)"])[1]
            for _ in range(args.repeats))
        print(f"interpreter teardown after torch and torch._dynamo: {exit_cpu:.2f} s CPU (median of "
              f"{args.repeats}; the CLI skips it)")
        for experiment_set, run_id in [("noisy", "digits-sr-q-s0"), ("vpn", "digits-dnn3-vpn-s0"),
                                       ("noisy", "digits-vit-q-s0")]:
            seconds, whole = [], []
            for repeat in range(args.repeats):
                out = Path(tmp) / "runs" / f"{run_id}-{repeat}"
                whole.append(timed([*py, "train", "--params", str(path), "--set", experiment_set, "--run-id", run_id,
                                    "--data", str(data), "--model", str(out / "model.pt"), "--threads", "1"])[1])
                seconds.append(json.loads((out / "trained.json").read_text())["startup_cpu_seconds"])
            print(f"job {run_id}: {statistics.median(seconds):.2f} s CPU before the first training step, "
                  f"{statistics.median(whole):.2f} s CPU in all (median of {args.repeats})")


if __name__ == "__main__":
    main()
