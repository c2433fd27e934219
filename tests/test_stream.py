"""Streamed image folders: prepare indexes the files (paths, labels, sizes, sha256) instead of decoding
them, and training and every evaluation protocol see exactly the pixels, and give exactly the numbers,
of the in-memory path on the same JPEGs."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline_src.spec.config import REPO_ROOT, RunConfig
from pipeline_src.data.prepared import load_prepared, prepare
from pipeline_src.data.stream import ImageStream
from pipeline_src.__main__ import train_and_evaluate

from helpers import make_run  # the run table's run

CLASSES = ["cat", "dog", "fox"]


@pytest.fixture(scope="module")
def jpeg_folder(tmp_path_factory):
    """train/ and val/ class folders of real JPEGs in assorted sizes and aspect ratios."""
    root = tmp_path_factory.mktemp("imagefolder")
    rng = np.random.default_rng(0)
    for split, count in (("train", 8), ("val", 5)):
        for label, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                height, width = rng.integers(20, 60, 2)
                base = np.zeros((height, width, 3), np.uint8)
                base[..., label] = 200  # a class colour, so the classes can be learned
                noise = rng.integers(0, 55, (height, width, 3), dtype=np.uint8)
                Image.fromarray(base + noise).save(root / split / name / f"{i}.jpg", quality=90)
    return root


def _prepared(folder, tmp_path, streaming, image_size=32, **extra):
    spec = {"source": "imagefolder", "train_dir": str(folder / "train"), "test_dir": str(folder / "val"),
            "image_size": image_size, "streaming": streaming, **extra}
    out = tmp_path / f"prepared-{streaming}-{image_size}"
    return out, prepare("folder", spec, out, REPO_ROOT)


def test_streamed_prepare_indexes_files_and_decodes_the_same_pixels(jpeg_folder, tmp_path):
    streamed_dir, streamed = _prepared(jpeg_folder, tmp_path, True)
    memory_dir, in_memory = _prepared(jpeg_folder, tmp_path, False)
    assert streamed["streaming"] and not in_memory["streaming"]
    assert streamed["shape"] == in_memory["shape"] == [3, 32, 32]
    assert streamed["class_counts"] == in_memory["class_counts"] == {"train": [8, 8, 8], "test": [5, 5, 5]}
    with np.load(streamed_dir / "data.npz") as npz:
        assert sorted(npz.files) == ["bytes_test", "bytes_train", "files_test", "files_train",
                                     "sha256_test", "sha256_train", "y_test", "y_train"]  # no pixels
        first = jpeg_folder / "train" / str(npz["files_train"][0])
        assert npz["files_train"][0] == "cat/0.jpg"
        assert npz["sha256_train"][0] == hashlib.sha256(first.read_bytes()).hexdigest()
        assert npz["bytes_train"][0] == first.stat().st_size

    stream, memory = load_prepared(streamed_dir, workers=2), load_prepared(memory_dir)
    assert isinstance(stream.x_test, ImageStream) and stream.x_test.shape == tuple(memory.x_test.shape)
    assert torch.equal(stream.y_train, memory.y_train) and torch.equal(stream.y_test, memory.y_test)
    idx = torch.tensor([7, 0, 23, 5])
    assert torch.equal(stream.x_train[idx], memory.x_train[idx])
    assert torch.equal(stream.x_test[2:9], memory.x_test[2:9])
    batches = [torch.tensor([3, 1]), torch.tensor([0, 2, 4])]
    assert all(torch.equal(got, memory.x_train[idx]) for got, idx in zip(stream.x_train.prefetched(batches), batches))


def test_auto_streams_only_above_the_threshold(jpeg_folder, tmp_path):
    # 39 images: 0.1 MB decoded at 32 px, 5.9 MB at 224 px
    assert not _prepared(jpeg_folder, tmp_path, "auto", 32, stream_over_mb=1)[1]["streaming"]
    assert _prepared(jpeg_folder, tmp_path, "auto", 224, stream_over_mb=1)[1]["streaming"]


def _run(method: dict) -> RunConfig:
    # through the run table; its dataset name stays digits, what it trains on is the folder prepared here
    return make_run(method, epochs=3, model={"arch": "sr"}, batch_size=8, eval_batch_size=6,
                    optimizer={"lr": 0.01, "schedule": "none"})


@pytest.mark.parametrize("method", [
    {"label": "q", "name": "noisynn", "noise": {"kind": "optimal_q"}, "apply_at": "both",
     "eval_protocols": ["none", "class_sorted", "shuffled", "single"], "eval_batch_sizes": [2, 5]},
    {"label": "v", "name": "vpn", "generator": "dnn3", "generator_hidden": 16, "mode": "joint"},
], ids=["noisynn-every-protocol", "vpn-class-enumeration"])
def test_training_and_every_evaluation_match_the_in_memory_path(jpeg_folder, tmp_path, method):
    streamed_dir, _ = _prepared(jpeg_folder, tmp_path, True)
    memory_dir, _ = _prepared(jpeg_folder, tmp_path, False)
    streamed = train_and_evaluate(_run(method), streamed_dir, tmp_path / "streamed", threads=2)
    in_memory = train_and_evaluate(_run(method), memory_dir, tmp_path / "memory")
    assert [{k: v for k, v in h.items() if k != "seconds"} for h in streamed["history"]] == \
           [{k: v for k, v in h.items() if k != "seconds"} for h in in_memory["history"]]
    assert streamed["evaluations"] == in_memory["evaluations"]
    assert len(streamed["evaluations"]) >= 3
    on_disk = json.loads((tmp_path / "streamed" / "metrics.json").read_text())
    assert on_disk["provenance"]["data_version"] != in_memory["provenance"]["data_version"]
