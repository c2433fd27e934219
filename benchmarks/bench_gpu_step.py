"""Training throughput on a GPU: our training step against a loop in the authors' style, side by side.

Two cases, each with one model built by pipeline_src.methods.models and trained on random uint8 images:
- resnet18_32: ResNet-18 with the small-image stem at 32 px, 10 classes (the CIFAR models);
- vit_s16_224: ViT-S/16 at 224 px, 1000 classes (the NoisyNN ViT family).

Loops, run one after the other in this process on the same GPU:
- ours: the uint8 images resident on the device, batches gathered from a randperm, bf16 autocast,
  channels_last and (with --compile, the default on CUDA) torch.compile; pipeline_src.training.train.train_epoch,
  set up as train.train_run sets it up;
- authors' style: torch DataLoader (pinned memory, --workers processes) over H x W x C numpy images with
  per-sample transforms (to tensor, to float, normalise), fp32, and loss.item() after every step.

Each loop gets one untimed epoch first (compilation, cuDNN autotuning, DataLoader workers starting),
then a timed one; images/s is over the timed epoch, peak GPU memory over both. The issue's target for
ResNet-18 at 32 px on an H100 is 45,000 images/s for ours.

    python benchmarks/bench_gpu_step.py [--steps 50] [--workers 8] [--no-compile] [--only resnet18_32]
        [--json PATH]
On a CPU (--device cpu, small --steps and --batch) it checks that the script runs, nothing more.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runs from a checkout without the package installed

import pandas as pd  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torchvision.transforms import v2  # noqa: E402

from bench_train import NumpyImages  # noqa: E402
from pipeline_src.methods.base import Method  # noqa: E402
from pipeline_src.methods.models import build_from_cfg  # noqa: E402
from pipeline_src.training.train import train_epoch  # noqa: E402

# name -> (params models entry, input shape, classes, default batch)
CASES = {
    "resnet18_32": ({"arch": "resnet18", "small_stem": True}, (3, 32, 32), 10, 512),
    "vit_s16_224": ({"arch": "vit_small_patch16_224"}, (3, 224, 224), 1000, 256),
}
MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def fresh_model(case: str, device: torch.device) -> torch.nn.Module:
    torch.manual_seed(0)
    model_cfg, in_shape, classes, _ = CASES[case]
    return build_from_cfg(model_cfg, in_shape, classes, load_weights=False).to(device)


def optimizer_for(model: torch.nn.Module) -> torch.optim.Optimizer:
    return torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)


def ours(case: str, images: torch.Tensor, labels: torch.Tensor, batch: int, compile_model: bool,
         device: torch.device) -> float:
    """Seconds of the timed epoch."""
    method = Method(fresh_model(case, device), {"label": "baseline", "name": "baseline"}, {})
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    if compile_model:
        method.model.compile()
    optimizer = optimizer_for(method)
    x, y = images.to(device), labels.to(device)
    train_epoch(method, optimizer, x, y, batch, desc="ours warm-up")
    started = time.perf_counter()
    train_epoch(method, optimizer, x, y, batch, desc="ours")  # ends in .item(): synchronised
    return time.perf_counter() - started


def authors_style(case: str, images: torch.Tensor, labels: torch.Tensor, batch: int, workers: int,
                  device: torch.device) -> float:
    model = fresh_model(case, device)
    optimizer = optimizer_for(model)
    dataset = NumpyImages(images.permute(0, 2, 3, 1).numpy(), labels.numpy())
    dataset.transform = v2.Compose([dataset.transform, v2.Normalize(MEAN, STD)])
    loader = DataLoader(dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=workers,
                        pin_memory=device.type == "cuda", persistent_workers=workers > 0)

    def epoch() -> None:
        model.train()
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            loss.item()  # the per-step logging of the authors' loops: one host sync per step

    epoch()
    started = time.perf_counter()
    epoch()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - started


def peak_gb(device: torch.device):
    return round(torch.cuda.max_memory_allocated(device) / 2**30, 2) if device.type == "cuda" else "n/a"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--only", choices=sorted(CASES), action="append", help="run only this case (repeatable)")
    parser.add_argument("--steps", type=int, default=50, help="training steps per epoch")
    parser.add_argument("--batch", type=int, help="batch size (default: per case, 512 and 256)")
    parser.add_argument("--workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="DataLoader worker processes for the authors' style loop")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile in our loop (default: on CUDA only)")
    parser.add_argument("--json", type=Path, help="also write the rows here")
    args = parser.parse_args()
    device = torch.device(args.device)
    compile_model = device.type == "cuda" if args.compile is None else args.compile
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"{name}, torch {torch.__version__}, compile {compile_model}, {args.workers} DataLoader workers", flush=True)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    rows = []
    for case in args.only or list(CASES):
        _, in_shape, classes, default_batch = CASES[case]
        batch = args.batch or default_batch
        n = batch * args.steps
        generator = torch.Generator().manual_seed(0)
        images = torch.randint(0, 256, (n, *in_shape), dtype=torch.uint8, generator=generator)
        labels = torch.randint(0, classes, (n,), generator=generator)
        for loop in ("ours", "authors_style"):
            if device.type == "cuda":
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats(device)
            seconds = (ours(case, images, labels, batch, compile_model, device) if loop == "ours"
                       else authors_style(case, images, labels, batch, args.workers, device))
            rows.append({"case": case, "loop": loop, "batch": batch, "steps": args.steps,
                         "images/s": round(n / seconds, 1), "peak_gpu_gb": peak_gb(device)})
            print(f"{case} {loop}: {rows[-1]['images/s']} images/s, peak GPU {rows[-1]['peak_gpu_gb']} GB", flush=True)
        rows[-2]["ratio"] = round(rows[-2]["images/s"] / rows[-1]["images/s"], 2)
    print(pd.DataFrame(rows).fillna("").to_markdown(index=False))
    if args.json:
        args.json.write_text(json.dumps({"device": name, "torch": torch.__version__, "compile": compile_model,
                                         "rows": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
