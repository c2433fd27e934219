"""One epoch of every model in params/paper.yaml on synthetic data of the real shapes.

For each distinct (model, dataset, method) of the run table -- method: its label, and a frozen VPN
apart from the joint one of the same label; of a sweep the first point -- the model and method are built
as train.train_run builds them (noise hooks, VPN generators, augmentations, channels_last on CUDA,
bf16 autocast) and pipeline_src.training.train.train_epoch runs over `--batches` batches of random uint8
images at the dataset's input shape, with random labels over its classes. It catches what would
fail only at paper scale: out of memory, ops without a CUDA or bf16 kernel, shape mismatches.

Not covered: pretrained weights (weight files are absent here, so every model is built with
load_weights=False: same shapes, random weights), ImageNet streaming from files (the images here are
device-resident), evaluation. A frozen VPN run gets a checkpoint of its own freshly built base.
The seconds include the first steps' cuDNN/allocator warm-up: a smoke test, not a benchmark.

    python benchmarks/gpu_check.py [--params params/paper.yaml] [--device cuda] [--only REGEX]
        [--max-batch N] [--batches 3] [--list] [--json PATH]
"""
from __future__ import annotations

import argparse
import json
import math
import re
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without the package installed

import pandas as pd  # noqa: E402
import torch  # noqa: E402

from pipeline_src.spec.config import dataset_spec, expand_runs, load_params  # noqa: E402
from pipeline_src.methods.registry import build_method  # noqa: E402
from pipeline_src.methods.models import build_from_cfg  # noqa: E402
from pipeline_src.spec.datasets import input_shape, resolve_spec  # noqa: E402
from pipeline_src.training.train import make_optimizer, train_epoch  # noqa: E402

# classes per source, as the readers produce them; synthetic-clutter has its own num_classes and an
# imagefolder dataset is taken to be ImageNet-1k (the only one paper.yaml has)
CLASSES = {"digits": 10, "fashion-mnist": 10, "cifar10": 10, "cifar100": 100, "tiny-imagenet": 200}


COLUMNS = ["pair", "method", "in_shape", "classes", "batch", "seconds", "images/s", "peak_gpu_gb", "loss", "status"]


def num_classes(spec: dict) -> int:
    return CLASSES.get(spec["source"]) or spec.get("num_classes") or 1000


def distinct_runs(params: dict) -> list:
    """The first run of each pair_name; seeds and grid points train the same code with other numbers."""
    runs = {}
    for run in expand_runs(params):
        runs.setdefault(pair_name(run), run)
    return list(runs.values())


def pair_name(run) -> str:
    # the frozen VPN rows reuse the joint rows' labels but train another set of parameters
    frozen = "-frozen" if run.method.get("mode") == "frozen" else ""
    return f"{run.dataset}-{run.model}-{run.method['label']}{frozen}"


def describe(run, params: dict, max_batch: int | None) -> dict:
    spec = resolve_spec(run.dataset, dataset_spec(params, run.dataset))
    return {"pair": pair_name(run), "method": run.method["name"], "in_shape": input_shape(spec),
            "classes": num_classes(spec), "batch": min(run.batch_size, max_batch or run.batch_size)}


def check(run, row: dict, device: torch.device, batches: int, tmp: Path) -> None:
    """Fills row with the epoch's seconds, images/s and loss."""
    in_shape, classes, batch_size = row["in_shape"], row["classes"], row["batch"]
    torch.manual_seed(run.seed)
    base_checkpoint = None
    if run.method.get("mode") == "frozen":  # the frozen base is loaded from a file, as in the real run
        base_checkpoint = tmp / f"{pair_name(run)}.pt"
        base = build_from_cfg(run.model_cfg, in_shape, classes, load_weights=False)
        torch.save({"model": base.state_dict()}, base_checkpoint)
    model = build_from_cfg(run.model_cfg, in_shape, classes, load_weights=False)
    info = {"num_classes": classes, "in_shape": in_shape, "seed": run.seed, "batch_size": run.batch_size,
            "eval_batch_size": run.eval_batch_size, "label_smoothing": run.label_smoothing,
            "base_checkpoint": str(base_checkpoint) if base_checkpoint else None}
    method = build_method(model, run.method, info).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    if run.compile:
        method.model.compile()
    optimizer = make_optimizer([p for p in method.parameters() if p.requires_grad], run.optimizer)
    n = batch_size * batches
    x = torch.randint(0, 256, (n, *in_shape), dtype=torch.uint8, device=device)
    y = torch.randint(0, classes, (n,), device=device)
    started = time.perf_counter()
    loss = train_epoch(method, optimizer, x, y, batch_size, desc=pair_name(run))  # ends in .item(): synced
    seconds = time.perf_counter() - started
    row.update({"seconds": round(seconds, 3), "images/s": round(n / seconds, 1), "loss": round(loss, 4)})
    if not math.isfinite(loss):
        raise FloatingPointError(f"training loss is {loss}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params/paper.yaml")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", help="regular expression searched in dataset-model-label")
    parser.add_argument("--max-batch", type=int, help="cap on each run's batch_size (small on a CPU)")
    parser.add_argument("--batches", type=int, default=3, help="batches per epoch")
    parser.add_argument("--list", action="store_true", help="print the pairs and exit")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    params = load_params(args.params)
    runs = [r for r in distinct_runs(params) if not args.only or re.search(args.only, pair_name(r))]
    if args.list:
        for run in runs:
            print(f"{pair_name(run):50s} {run.method['name']:9s} batch {run.batch_size:4d} (set {run.experiment_set})")
        print(f"{len(runs)} pairs")
        return 0
    device = torch.device(args.device)
    print(f"{len(runs)} pairs on {torch.cuda.get_device_name(device) if device.type == 'cuda' else 'cpu'}, "
          f"torch {torch.__version__}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for run in runs:
            if device.type == "cuda":
                torch.cuda.reset_peak_memory_stats(device)
            row = describe(run, params, args.max_batch)
            try:
                check(run, row, device, args.batches, Path(tmp))
                row["status"] = "OK"
            except Exception as err:  # noqa: BLE001 -- one pair's failure must not hide the others'
                first = (str(err).strip().splitlines() or [""])[0][:200]
                row["status"] = f"{type(err).__name__}: {first}"
            # also after a failure: an out-of-memory pair shows how far it got
            row["peak_gpu_gb"] = (round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
                                  if device.type == "cuda" else "n/a")
            row["in_shape"] = "x".join(map(str, row["in_shape"]))
            rows.append(row)
            print(f"{row['pair']}: {row['status']} ({row.get('seconds')} s, {row.get('images/s')} images/s, "
                  f"peak_gpu_gb {row['peak_gpu_gb']})", flush=True)
            if device.type == "cuda":  # the next pair starts from an empty cache, so its peak is its own
                torch.cuda.empty_cache()
    print(pd.DataFrame(rows, columns=COLUMNS).to_markdown(index=False))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    failed = sum(row["status"] != "OK" for row in rows)
    print(f"{len(rows) - failed} OK, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
