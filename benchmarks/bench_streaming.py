"""Streaming an image folder: peak memory while an epoch streams, and predictions equal to the in-memory path.

Writes an image folder of real JPEGs at 224 px (10 classes, 90% train / 10% val; smooth random fields
with a class colour), then runs each phase in a fresh process, so each reports its own peak RSS:

- stream: prepare with streaming (an index: paths, labels, sizes, sha256), train softmax regression
  for one epoch with images decoded batch by batch, save the test predictions;
- memory: prepare the same folder decoded into memory (today's path for small data), load it, predict
  the test set with the model the stream phase trained, and compare the predictions.

    .venv/bin/python benchmarks/bench_streaming.py [--images 20000] [--workers 2] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

CLASSES = 10
SIZE = 224


def write_folder(root: Path, images: int) -> None:
    rng = np.random.default_rng(0)
    from PIL import Image

    for i in range(images):
        split = "val" if (i // CLASSES) % 10 == 0 else "train"
        label = i % CLASSES
        folder = root / split / f"class{label:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        coarse = rng.integers(0, 256, (7, 7, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((SIZE, SIZE), Image.Resampling.BICUBIC)
        tint = np.zeros((SIZE, SIZE, 3), np.int16)
        tint[..., label % 3] = 40 + 12 * label
        pixels = np.clip(np.asarray(image, np.int16) // 2 + tint, 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"{i:06d}.jpg", quality=90)


def _spec(root: Path, streaming: bool) -> dict:
    return {"source": "imagefolder", "train_dir": str(root / "train"), "test_dir": str(root / "val"),
            "image_size": SIZE, "streaming": streaming}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def phase_stream(root: Path, out: Path, workers: int) -> dict:
    import torch

    from pipeline_src.spec.config import REPO_ROOT, RunConfig
    from pipeline_src.data.prepared import load_prepared, prepare
    from pipeline_src.spec.method_spec import resolve_method
    from pipeline_src.methods.base import predict
    from pipeline_src.data.stream import to_input
    from pipeline_src.__main__ import train_and_evaluate

    started = time.perf_counter()
    manifest = prepare("folder", _spec(root, True), out / "streamed", REPO_ROOT)
    prepare_s = time.perf_counter() - started
    cfg = RunConfig(run_id="folder-sr-stream-s0", experiment_set="bench", set_kind="baseline", dataset="folder",
                    model="sr", model_cfg={"arch": "sr"}, method=resolve_method({"label": "b", "name": "baseline"},
                                                                                128, 256),
                    seed=0, epochs=1, batch_size=128, eval_batch_size=256,
                    optimizer={"name": "adam", "lr": 0.001, "momentum": 0.9, "weight_decay": 0.0, "schedule": "none"},
                    device="cpu")
    metrics = train_and_evaluate(cfg, out / "streamed", out / "run", threads=workers)
    data = load_prepared(out / "streamed", workers=workers)
    from pipeline_src.methods.models import build_from_cfg

    model = build_from_cfg(cfg.model_cfg, data.x_train.shape[1:], CLASSES)
    model.load_state_dict(torch.load(out / "run" / "model.pt", weights_only=True)["model"])
    model.eval()
    with torch.inference_mode():
        preds = predict(model, to_input(data.x_test, torch.device("cpu")), 256)
    np.save(out / "stream_predictions.npy", preds.numpy())
    epoch_s = metrics["history"][0]["seconds"]
    return {"phase": "stream", "train_images": manifest["n_train"], "test_images": manifest["n_test"],
            "jpeg_bytes": sum(manifest["file_bytes"].values()), "prepare_index_s": round(prepare_s, 1),
            "epoch_s": round(epoch_s, 1), "train_images_per_s": round(manifest["n_train"] / epoch_s, 1),
            "test_top1": metrics["test_top1"], "peak_rss_mb": round(_peak_mb())}


def phase_memory(root: Path, out: Path) -> dict:
    import torch

    from pipeline_src.spec.config import REPO_ROOT
    from pipeline_src.data.prepared import load_prepared, prepare
    from pipeline_src.methods.base import predict
    from pipeline_src.methods.models import build_from_cfg
    from pipeline_src.data.stream import to_input

    started = time.perf_counter()
    prepare("folder", _spec(root, False), out / "memory", REPO_ROOT)
    prepare_s = time.perf_counter() - started
    data = load_prepared(out / "memory")
    model = build_from_cfg({"arch": "sr"}, tuple(data.x_train.shape[1:]), CLASSES)
    model.load_state_dict(torch.load(out / "run" / "model.pt", weights_only=True)["model"])
    model.eval()
    with torch.inference_mode():
        preds = predict(model, to_input(data.x_test, torch.device("cpu")), 256).numpy()
    streamed = np.load(out / "stream_predictions.npy")
    decoded = data.x_train.numel() + data.x_test.numel()
    return {"phase": "memory", "decoded_mb": round(decoded / 2 ** 20), "prepare_decode_s": round(prepare_s, 1),
            "predictions_equal": bool(np.array_equal(preds, streamed)), "test_images": int(len(preds)),
            "peak_rss_mb": round(_peak_mb())}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=20000)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", type=Path)
    parser.add_argument("--phase", choices=["stream", "memory"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:  # a child process: one phase, its result as the last line
        result = phase_stream(args.out / "jpegs", args.out, args.workers) if args.phase == "stream" \
            else phase_memory(args.out / "jpegs", args.out)
        print(json.dumps(result))
        return
    out = args.out or Path(tempfile.mkdtemp(prefix="bench_streaming-"))
    started = time.perf_counter()
    write_folder(out / "jpegs", args.images)
    print(json.dumps({"phase": "write", "images": args.images, "seconds": round(time.perf_counter() - started, 1)}))
    for phase in ("stream", "memory"):
        child = subprocess.run([sys.executable, __file__, "--phase", phase, "--out", str(out),
                                "--workers", str(args.workers)], capture_output=True, text=True)
        if child.returncode:
            sys.exit(f"{phase} phase failed:\n{child.stderr[-3000:]}")
        print(child.stdout.strip().splitlines()[-1])
    print(f"files under {out}")


if __name__ == "__main__":
    main()
