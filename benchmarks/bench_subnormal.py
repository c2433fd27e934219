"""What subnormal weights cost this CPU: DNN3's hidden layer (1024 x 1024, batch 256), forward and
backward, with a given fraction of its weights subnormal (nonzero, below float32's smallest normal),
against the same weights with those entries set to 0 and against torch.set_flush_denormal(True).

Adam-trained DNN3 runs of the Fashion-MNIST report end with 11 to 30% of that layer's weights
subnormal (the default fraction is the low end). CPUs differ in what a subnormal operand costs
(microcode assists on some), so the same run can take several times longer on one machine than on
another; this measures the ratio here.

    .venv/bin/python benchmarks/bench_subnormal.py [--fraction 0.115] [--repeats 20]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from pipeline_src.provenance import cpu_model


def step_seconds(weight: torch.Tensor, x: torch.Tensor, repeats: int) -> float:
    """Median seconds of one forward and backward matrix product through weight."""
    grad_out = torch.ones(x.shape[0], weight.shape[0])
    times = []
    for _ in range(repeats + 2):
        started = time.perf_counter()
        x @ weight.T              # forward
        grad_out @ weight         # gradient to the input
        grad_out.T @ x            # gradient to the weight
        times.append(time.perf_counter() - started)
    return statistics.median(times[2:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fraction", type=float, default=0.115, help="share of weights made subnormal")
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    if not 0 <= args.fraction <= 1:
        parser.error(f"--fraction {args.fraction} is out of range: 0 to 1")
    torch.manual_seed(0)
    torch.set_num_threads(1)  # as a training job on one machine runs
    weight = torch.randn(1024, 1024) * 0.03
    picked = torch.rand_like(weight) < args.fraction
    tiny = torch.finfo(torch.float32).tiny
    weight[picked] = tiny * torch.rand(int(picked.sum())).clamp_min(1e-3)  # nonzero and below tiny
    x = torch.randn(256, 1024)
    flushed = torch.where(weight.abs() < tiny, torch.zeros_like(weight), weight)
    subnormal = step_seconds(weight, x, args.repeats)
    zeroed = step_seconds(flushed, x, args.repeats)
    supported = torch.set_flush_denormal(True)  # False where the CPU lacks the mode (not x86 with SSE3)
    flush_mode = step_seconds(weight, x, args.repeats) if supported else None
    torch.set_flush_denormal(False)  # torch's default; training never turns it on
    print(json.dumps({
        "cpu": cpu_model(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "subnormal_fraction": round(((weight != 0) & (weight.abs() < tiny)).float().mean().item(), 4),
        "seconds_with_subnormals": round(subnormal, 5), "seconds_zeroed": round(zeroed, 5),
        "seconds_flush_denormal": None if flush_mode is None else round(flush_mode, 5),
        "slowdown": round(subnormal / zeroed, 1),
    }, indent=1))


if __name__ == "__main__":
    main()
