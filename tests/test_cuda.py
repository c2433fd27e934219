"""The CUDA path: bf16 autocast, channels_last, device-resident data, no host sync per step, VPN draws
on the device, compiled training and streamed data. Skipped where torch sees no CUDA device (this
project's CPU machine and CI); run with `pytest -m cuda` on a GPU machine."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_src.spec.config import REPO_ROOT, RunConfig
from pipeline_src.data.prepared import prepare
from pipeline_src.spec.method_spec import resolve_method
from pipeline_src.methods.registry import build_method
from pipeline_src.methods.models import build_model
from pipeline_src.training.train import make_optimizer, train_epoch
from pipeline_src.__main__ import train_and_evaluate

from helpers import make_run  # the run table's run; digits_dir comes from conftest.py

pytestmark = [pytest.mark.cuda,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]

NOISY = {"label": "q", "name": "noisynn", "noise": {"kind": "optimal_q"}, "apply_at": "both",
         "eval_protocols": ["none", "class_sorted", "shuffled", "single"]}
VPN = {"label": "v", "name": "vpn", "generator": "dnn3", "generator_hidden": 64, "mode": "joint"}


def _run(method: dict, model: dict, **training) -> RunConfig:
    """Four epochs on the GPU at a constant lr, through the run table (`training`: keys of its training block)."""
    return make_run(method, epochs=4, model=model, device="cuda", optimizer={"schedule": "none"}, **training)


def _sync_warnings(method_spec: dict, batches: int) -> int:
    """How many synchronising CUDA calls one epoch of `batches` steps makes (torch's sync debug mode)."""
    device = torch.device("cuda")
    torch.manual_seed(0)
    model = build_model("dnn3", (1, 8, 8), 10, hidden=64)
    method = build_method(model, resolve_method(method_spec, 32, 32),
                          {"num_classes": 10, "in_shape": (1, 8, 8), "seed": 0, "batch_size": 32,
                           "eval_batch_size": 32, "label_smoothing": 0.0, "base_checkpoint": None}).to(device)
    optimizer = make_optimizer(list(method.parameters()), make_run(optimizer={"lr": 1e-3}).optimizer)
    x = torch.randint(0, 256, (32 * batches, 1, 8, 8), dtype=torch.uint8, device=device)
    y = torch.randint(0, 10, (32 * batches,), device=device)
    train_epoch(method, optimizer, x, y, 32)  # warm-up: first-call allocations and library setup
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            train_epoch(method, optimizer, x, y, 32)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    return sum("synchronizing" in str(w.message) for w in caught)


@pytest.mark.parametrize("method", [{"label": "b", "name": "baseline"}, NOISY, VPN], ids=["baseline", "noisynn", "vpn"])
def test_no_host_sync_per_step(method):
    # the epoch's mean loss is read once at its end; nothing inside the loop may wait on the GPU
    assert _sync_warnings(method, batches=4) == _sync_warnings(method, batches=16) <= 1


@pytest.mark.parametrize("method", [NOISY, VPN], ids=["noisynn", "vpn"])
def test_bf16_channels_last_training_learns(digits_dir, tmp_path, method):
    cfg = _run(method, {"arch": "test_resnet", "small_stem": True})
    metrics = train_and_evaluate(cfg, digits_dir, tmp_path)
    assert metrics["provenance"]["device"].startswith("cuda")
    assert all(np.isfinite(h["train_loss"]) for h in metrics["history"])
    assert metrics["evaluations"]["no_noise"] > 50.0, "four epochs on digits should learn on the GPU as on the CPU"


def test_vpn_noise_is_drawn_on_the_device():
    from pipeline_src.methods.vpn import sample_noise

    sigma = torch.rand(4, 1, 8, 8, device="cuda")
    draws = sample_noise(sigma, 3)
    assert draws.device.type == "cuda" and draws.shape == (3, 4, 1, 8, 8)


def test_compiled_training_matches_eager(digits_dir, tmp_path):
    model = {"arch": "vit_tiny_patch16_224", "small_stem": True,
             "timm_kwargs": {"depth": 2, "embed_dim": 32, "num_heads": 2}}
    eager = train_and_evaluate(_run(NOISY, model), digits_dir, tmp_path / "eager")
    compiled = train_and_evaluate(_run(NOISY, model, compile=True), digits_dir, tmp_path / "compiled")
    for mode, value in eager["evaluations"].items():  # bf16 kernels differ in rounding, not in what is learned
        assert compiled["evaluations"][mode] == pytest.approx(value, abs=3.0), mode


def test_streamed_folder_matches_in_memory_on_the_gpu(tmp_path):
    rng = np.random.default_rng(0)
    for split, count in (("train", 12), ("val", 6)):
        for label in range(3):
            folder = tmp_path / "jpegs" / split / f"c{label}"
            folder.mkdir(parents=True)
            for i in range(count):
                pixels = rng.integers(0, 60, (40, 48, 3), dtype=np.uint8)
                pixels[..., label] += 180
                Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=90)
    results = {}
    for streaming in (True, False):
        spec = {"source": "imagefolder", "train_dir": str(tmp_path / "jpegs" / "train"),
                "test_dir": str(tmp_path / "jpegs" / "val"), "image_size": 32, "streaming": streaming}
        prepare("folder", spec, tmp_path / f"prepared-{streaming}", REPO_ROOT)
        # the run's dataset name stays the run table's; what it trains on is the folder prepared here
        cfg = _run(NOISY, {"arch": "test_resnet", "small_stem": True}, batch_size=8, eval_batch_size=6)
        results[streaming] = train_and_evaluate(cfg, tmp_path / f"prepared-{streaming}", tmp_path / f"run-{streaming}",
                                       threads=2)
    for mode, value in results[False]["evaluations"].items():  # 18 test images: one differing image is 5.6
        assert results[True]["evaluations"][mode] == pytest.approx(value, abs=6.0), mode
