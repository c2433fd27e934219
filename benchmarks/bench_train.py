"""One epoch of DNN3 on Fashion-MNIST: our loop vs a loop in the style of the VPN authors' code.

Same model, same data, same optimiser, side by side in one process:
- ours: the whole uint8 training set as one tensor, batches gathered from a randperm,
  converted to float in one op per batch (pipeline_src.training.train.train_epoch);
- authors' style: torch DataLoader over numpy arrays with a per-sample ToTensor transform.

    .venv/bin/python benchmarks/bench_train.py [--threads 2] [--hidden 1024] [--batch 256]
"""
from __future__ import annotations

import argparse
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset
from torchvision.transforms import v2

from pipeline_src.spec.config import REPO_ROOT
from pipeline_src.data.prepared import load_prepared, prepare
from pipeline_src.methods.base import Method
from pipeline_src.methods.models import DNN3
from pipeline_src.training.train import train_epoch


class NumpyImages(Dataset):
    """The authors' pattern: a Dataset over numpy arrays, transformed sample by sample."""

    def __init__(self, images: np.ndarray, labels: np.ndarray):
        self.images, self.labels = images, labels
        self.transform = v2.Compose([v2.ToImage(), v2.ToDtype(torch.float32, scale=True)])

    def __len__(self):
        return len(self.images)

    def __getitem__(self, i):
        return self.transform(self.images[i]), int(self.labels[i])


def authors_style_epoch(model, optimizer, loader) -> float:
    model.train()
    total, seen = 0.0, 0
    for x, y in loader:
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        total += loss.item() * len(y)
        seen += len(y)
    return total / seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--hidden", type=int, default=1024)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--workers", type=int, default=0, help="DataLoader workers for the authors' style loop")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    out = REPO_ROOT / "results" / "prepared" / "fmnist-full"
    if not (out / "data.npz").exists():
        prepare("fmnist-full", {"source": "fashion-mnist"}, out, REPO_ROOT)
    data = load_prepared(out)
    x, y = data.x_train, data.y_train
    in_features = x[0].numel()
    print(f"Fashion-MNIST train {tuple(x.shape)}, DNN3 hidden {args.hidden}, batch {args.batch}, "
          f"{args.threads} threads, torch {torch.__version__}")

    def fresh():
        torch.manual_seed(0)
        model = DNN3(in_features, 10, args.hidden)
        return model, torch.optim.Adam(model.parameters(), lr=1e-3)

    images = x.permute(0, 2, 3, 1).numpy()  # H x W x C uint8, as torchvision datasets hand them out
    loader = DataLoader(NumpyImages(images, y.numpy()), batch_size=args.batch, shuffle=True,
                        num_workers=args.workers)
    results = {}
    for name in ("ours", "authors_style", "ours", "authors_style"):  # interleaved: both see the same machine load
        model, optimizer = fresh()
        started = time.perf_counter()
        if name == "ours":
            loss = train_epoch(Method(model, {"label": "baseline", "name": "baseline"}, {}), optimizer, x, y, args.batch)
        else:
            loss = authors_style_epoch(model, optimizer, loader)
        elapsed = time.perf_counter() - started
        results.setdefault(name, []).append(elapsed)
        print(f"  {name:14s} epoch {elapsed:7.2f} s  loss {loss:.4f}")
    ours, theirs = min(results["ours"]), min(results["authors_style"])
    print(f"best of two: ours {ours:.2f} s, authors' style {theirs:.2f} s, speed-up {theirs / ours:.2f}x")


if __name__ == "__main__":
    main()
