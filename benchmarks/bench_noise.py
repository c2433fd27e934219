"""What NoisyNN's noise costs.

(a) One training step (forward, backward, Adam) with circular-shift noise hooked at the
    default site versus without, same model and batch. Clean and noisy steps alternate so
    that load from other processes hits both alike; the median of each is reported.
    With one thread (the default) the clock is the thread's CPU time, which other processes
    on a shared machine barely move; with more threads it is wall time.
(b) Optimal Q in the linear form the pipeline uses versus the authors' quadratic form
    (B-1 shifted copies concatenated), at batch 256: time ratio and largest relative difference.

    python -m benchmarks.bench_noise [--steps 5] [--batch 64] [--image-size 28]
"""
from __future__ import annotations

import argparse
import platform
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from pipeline_src.methods.hooks import attach_noise
from pipeline_src.methods.sites import resolve_site
from pipeline_src.methods.models import build_model
from pipeline_src.methods.noise import apply_noise

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the slow references live with the tests
from references import optimal_q_quadratic_reference  # noqa: E402

SHIFT = {"kind": "circular_shift", "strength": 0.3}


CLOCK = time.perf_counter  # main() switches to time.thread_time for single-threaded runs


def step_seconds(model, optimizer, x, y) -> float:
    start = CLOCK()
    optimizer.zero_grad(set_to_none=True)
    F.cross_entropy(model(x), y).backward()
    optimizer.step()
    return CLOCK() - start


def bench_training_step(arch: str, args) -> None:
    torch.manual_seed(0)
    in_shape = (3, args.image_size, args.image_size)
    # ViTs need the small stem (patch 4) to tile 28 px; ResNets keep timm's own stem, which is
    # what resnet18 is at 28 px unless asked otherwise, and keeps the step affordable on a CPU
    model = build_model(arch, in_shape, 10, small_stem=arch.startswith("vit")).train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    x, y = torch.randn(args.batch, *in_shape), torch.randint(0, 10, (args.batch,))
    noise_on = [False]
    handle = attach_noise(model, "default", SHIFT, lambda: noise_on[0])
    times = {False: [], True: []}
    for step in range(2 * (args.warmup + args.steps)):
        noise_on[0] = bool(step % 2)
        seconds = step_seconds(model, optimizer, x, y)
        if step >= 2 * args.warmup:
            times[noise_on[0]].append(seconds)
    handle.remove()
    clean, noisy = statistics.median(times[False]), statistics.median(times[True])
    site = resolve_site(model, "default")[0]
    print(f"{arch:<24} {site:<16} {clean * 1e3:10.1f} {noisy * 1e3:10.1f} {100 * (noisy / clean - 1):+9.1f}%")


def median_seconds(fn, x, repeats: int, warmup: bool = True) -> float:
    if warmup:
        fn(x)
    times = []
    for _ in range(repeats):
        start = CLOCK()
        fn(x)
        times.append(CLOCK() - start)
    return statistics.median(times)


def bench_optimal_q(args) -> None:
    tokens, dim = args.tokens, args.dim
    x = torch.randn(256, tokens, dim, generator=torch.Generator().manual_seed(0))
    linear = median_seconds(lambda t: apply_noise(t, {"kind": "optimal_q"}), x, 20)
    quadratic = median_seconds(optimal_q_quadratic_reference, x, 1, warmup=False)  # tens of seconds: once
    a, b = apply_noise(x, {"kind": "optimal_q"}), optimal_q_quadratic_reference(x)
    exact = (x.double() + x.double().sum(0)) / 257
    copies_gb = 255 * x.numel() * x.element_size() / 1e9
    print(f"optimal Q, batch 256, features {tokens}x{dim} fp32 (quadratic form holds {copies_gb:.1f} GB of copies)")
    print(f"  linear    {linear * 1e3:9.2f} ms   max rel. diff to float64: {((a - exact).abs().max() / exact.abs().max()).item():.2e}")
    print(f"  quadratic {quadratic * 1e3:9.2f} ms   max rel. diff to float64: {((b - exact).abs().max() / exact.abs().max()).item():.2e}")
    print(f"  quadratic / linear time: {quadratic / linear:.0f}x;  max |linear - quadratic| / max |quadratic|: "
          f"{((a - b).abs().max() / b.abs().max()).item():.2e}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=5, help="timed steps per setting")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps per setting")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=28)
    parser.add_argument("--models", nargs="+", default=["vit_tiny_patch16_224", "resnet18"])
    parser.add_argument("--tokens", type=int, default=50, help="ViT-Tiny at 28 px, patch 4: 49 patches + class token")
    parser.add_argument("--dim", type=int, default=192)
    args = parser.parse_args()
    global CLOCK
    torch.set_num_threads(args.threads)
    CLOCK = time.thread_time if args.threads == 1 else time.perf_counter
    print(f"torch {torch.__version__}, {platform.machine()} CPU, {args.threads} thread(s), "
          f"clock: {CLOCK.__name__}, batch {args.batch}, {args.image_size} px, "
          f"median of {args.steps} steps after {args.warmup} warm-up")
    print(f"{'model':<24} {'noise site':<16} {'clean ms':>10} {'noisy ms':>10} {'overhead':>10}")
    for arch in args.models:
        bench_training_step(arch, args)
    bench_optimal_q(args)


if __name__ == "__main__":
    main()
