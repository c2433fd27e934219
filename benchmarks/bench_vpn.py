"""VPN costs: (a) batched class enumeration vs the authors' per-class loop, (b) a joint VPN
training step vs a baseline step of the same classifier, against r = FLOPs(g) / FLOPs(f).

Run from the repository root: python -m benchmarks.bench_vpn [--device cuda] [--n-test 2000]
Random weights and inputs: the cost does not depend on what the models learned.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

from pipeline_src.methods.base import Method
from pipeline_src.methods.models import build_model, flops_per_sample
from pipeline_src.methods.vpn import VPNMethod

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))  # the slow references live with the tests
from references import class_enumeration_loop  # noqa: E402

NUM_CLASSES = 10


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def _interleaved_medians(fns: dict, device, repeats: int, warmup: int = 1) -> dict:
    """Median seconds per function, alternating them so load drift hits all alike."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            _sync(device)
            start = time.perf_counter()
            fn()
            _sync(device)
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(t) for name, t in times.items()}


def _vpn(arch: str, generator: str, in_shape, device="cpu", seed: int = 0) -> VPNMethod:
    torch.manual_seed(seed)
    model = build_model(arch, in_shape, NUM_CLASSES, small_stem=True)
    spec = {"name": "vpn", "label": "bench", "generator": generator, "mode": "joint"}
    method = VPNMethod(model, spec, {"num_classes": NUM_CLASSES, "in_shape": in_shape, "seed": seed})
    if generator == "dnn3":  # its N(0, 0.002) init gives sigma ~ 1e-5; make the noise visible
        with torch.no_grad():
            method.generator.head.weight.mul_(500)
    return method.to(device)


def bench_enumeration(arch, generator, in_shape, n_test, batch_size, device, repeats):
    method = _vpn(arch, generator, in_shape, device).eval()
    x = torch.rand(n_test, *in_shape, device=device)
    z = torch.randn(NUM_CLASSES, n_test, *in_shape, device=device)
    t = _interleaved_medians({"loop": lambda: class_enumeration_loop(method, x, batch_size, z),
                              "batched": lambda: method.class_enumeration(x, batch_size, z)}, device, repeats)
    looped, batched = t["loop"], t["batched"]
    same = torch.equal(method.class_enumeration(x, batch_size, z), class_enumeration_loop(method, x, batch_size, z))
    print(f"  {arch:>6} + {generator:<8} {str(in_shape):<12} N={n_test} bs={batch_size}: "
          f"loop {looped:7.3f} s  batched {batched:7.3f} s  ratio {looped / batched:5.2f}x  "
          f"same predictions: {same}")
    return looped / batched


def bench_step(arch, generator, in_shape, batch_size, device, steps, warmup=5):
    vpn = _vpn(arch, generator, in_shape)
    torch.manual_seed(0)
    base = Method(build_model(arch, in_shape, NUM_CLASSES, small_stem=True), {"name": "baseline"}, {})
    r = flops_per_sample(vpn.generator, in_shape) / flops_per_sample(base.model, in_shape)
    vpn.to(device).train()
    base.to(device).train()
    x = torch.rand(batch_size, *in_shape, device=device)
    y = torch.randint(0, NUM_CLASSES, (batch_size,), device=device)

    def stepper(method):
        opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)

        def step():
            opt.zero_grad(set_to_none=True)
            method.training_loss(x, y).backward()
            opt.step()
        return step

    t = _interleaved_medians({"base": stepper(base), "vpn": stepper(vpn)}, device, steps, warmup)
    t_base, t_vpn = t["base"], t["vpn"]
    ratio, bound = t_vpn / t_base, 1 + r + 0.1
    print(f"  {arch:>6} + {generator:<8} {str(in_shape):<12} B={batch_size}: baseline {1e3 * t_base:7.2f} ms  "
          f"VPN {1e3 * t_vpn:7.2f} ms  step ratio {ratio:5.2f}  r = {r:.3f}  "
          f"ratio <= 1 + r + 0.1 ({bound:.2f}): {ratio <= bound}")
    return ratio, r


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    print(f"torch {torch.__version__}, device {device}, threads {torch.get_num_threads()}")

    print("(a) class enumeration, C = 10: per-class loop vs batched (same draws)")
    cases = [("dnn3", "dnn3", (1, 28, 28)), ("sr", "dnn3", (1, 28, 28)),
             ("dnn3", "dnn3", (1, 8, 8)), ("sr", "dnn3", (1, 8, 8))]
    if device.type == "cuda":
        cases.append(("resnet18", "resnet18", (3, 32, 32)))
    for arch, generator, shape in cases:
        bench_enumeration(arch, generator, shape, args.n_test, args.batch_size, device, args.repeats)
    if args.batch_size > 32:  # a small eval batch, where per-pass overhead dominates
        bench_enumeration("dnn3", "dnn3", (1, 28, 28), args.n_test, 32, device, args.repeats)

    print("(b) training step, median after warm-up: joint VPN vs baseline of the same classifier")
    for arch, generator, shape in [("dnn3", "dnn3", (1, 28, 28)), ("sr", "dnn3", (1, 28, 28))] + (
            [("resnet18", "resnet18", (3, 32, 32))] if device.type == "cuda" else []):
        bench_step(arch, generator, shape, args.batch_size, device, args.steps)


if __name__ == "__main__":
    main()
