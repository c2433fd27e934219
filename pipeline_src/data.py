"""Datasets in one prepared form: `prepare` turns a dataset spec into out_dir/data.npz + manifest.json,
`load_prepared` reads it back after checking the npz against the manifest's sha256.

data.npz holds x_train, x_test (uint8, N x C x H x W), y_train, y_test (int64) and, for
synthetic-clutter, mask_train, mask_test (bool, N x H x W: where the object is). Its bytes depend only
on its arrays (fixed zip timestamps), so `data_version` is the same wherever the same data is prepared.
File formats live in readers.py; the generated sources (sklearn digits, synthetic clutter) live here.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from pipeline_src import readers
from pipeline_src.provenance import atomic_path, write_json
from pipeline_src.readers import DataError, input_label, safe_extract, sha256_file
from pipeline_src.sources import resolve_spec

__all__ = ["DataError", "Prepared", "prepare", "load_prepared", "resolve_spec", "safe_extract",
           "make_synthetic_clutter", "SHAPES"]

FORMAT = "pipeline_src.data/1"

_SPLIT_STREAM = {"train": 1, "test": 2}


def make_picker(spec: dict):
    """pick(labels, split) -> sorted indices: up to n per class, drawn with the spec seed.

    Each split has its own random stream, so changing the test subsample leaves the training one alone.
    A class with fewer than n examples keeps all of them; the manifest's class_counts shows it.
    """
    wanted = spec.get("subsample_per_class") or {}

    def pick(labels: np.ndarray, split: str) -> np.ndarray:
        n = wanted.get(split)
        if n is None:
            return np.arange(len(labels))
        rng = np.random.default_rng([spec["seed"], _SPLIT_STREAM[split]])
        keep = [rng.choice(np.flatnonzero(labels == c), min(n, int(np.sum(labels == c))), replace=False)
                for c in np.unique(labels)]
        return np.sort(np.concatenate(keep)) if keep else np.arange(0)

    return pick


# ---------------------------------------------------------------- generated sources

def read_digits(spec: dict, repo_root: Path, pick) -> dict:
    from sklearn import datasets
    from sklearn.model_selection import train_test_split

    bunch = datasets.load_digits()
    # Pixel values are 0..16; scale to the 0..255 range every other source uses.
    x = np.rint(bunch.images * (255 / 16)).astype(np.uint8)[:, None]
    y = bunch.target.astype(np.int64)
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=spec["test_fraction"], stratify=y, random_state=spec["seed"])
    source_file = Path(datasets.__file__).parent / "data" / "digits.csv.gz"
    inputs = {input_label(source_file, repo_root): sha256_file(source_file)} if source_file.is_file() else {}
    keep_train, keep_test = pick(y_train, "train"), pick(y_test, "test")
    return {"x_train": x_train[keep_train], "y_train": y_train[keep_train],
            "x_test": x_test[keep_test], "y_test": y_test[keep_test],
            "class_names": [str(d) for d in bunch.target_names], "found_at": "sklearn.datasets.load_digits",
            "inputs": inputs}


# Each class is a shape with its own colour (jittered per image); the background is random clutter,
# so the object is what tells classes apart and the background is irrelevant by construction.
SHAPES = {
    "disc": lambda dy, dx, r: dy ** 2 + dx ** 2 <= r ** 2,
    "square": lambda dy, dx, r: np.maximum(abs(dy), abs(dx)) <= 0.8 * r,
    "triangle": lambda dy, dx, r: (dy >= -r) & (dy <= 0.8 * r) & (abs(dx) <= 0.6 * (dy + r)),
    "cross": lambda dy, dx, r: ((abs(dx) <= r / 3) | (abs(dy) <= r / 3)) & (np.maximum(abs(dy), abs(dx)) <= r),
    "ring": lambda dy, dx, r: ((0.55 * r) ** 2 <= dy ** 2 + dx ** 2) & (dy ** 2 + dx ** 2 <= r ** 2),
    "diamond": lambda dy, dx, r: abs(dy) + abs(dx) <= r,
    "x": lambda dy, dx, r: (abs(abs(dy) - abs(dx)) <= r / 3) & (np.maximum(abs(dy), abs(dx)) <= 0.8 * r),
    "half-disc": lambda dy, dx, r: (dy >= 0) & (dy ** 2 + dx ** 2 <= r ** 2),
}


# One base colour per shape (RGB), far apart so a small model can learn the classes in a few epochs.
CLASS_COLOURS = np.array([[230, 40, 40], [40, 200, 60], [50, 80, 230], [240, 220, 40],
                          [200, 60, 220], [40, 220, 220], [250, 140, 20], [240, 240, 240]], np.float64)


def _clutter_image(rng: np.random.Generator, size: int, shape: str, colour: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float64) + 0.5
    # Background: smooth colour noise (a coarse random grid upsampled) blended with random stripes.
    coarse = rng.integers(0, 256, (int(rng.integers(3, 7)),) * 2 + (3,), dtype=np.uint8)
    smooth = np.asarray(Image.fromarray(coarse).resize((size, size), Image.Resampling.BICUBIC), np.float64)
    angle, period, phase = rng.uniform(0, np.pi), rng.uniform(3, max(4.0, size / 3)), rng.uniform(0, 2 * np.pi)
    wave = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(angle) + yy * np.sin(angle)) / period + phase)
    stripes = wave[..., None] * rng.uniform(0, 255, 3)
    blend = rng.uniform(0.3, 0.7)
    image = blend * smooth + (1 - blend) * stripes
    radius = rng.uniform(0.15, 0.3) * size
    cy, cx = rng.uniform(radius, size - radius, 2)
    mask = SHAPES[shape](yy - cy, xx - cx, max(radius, 1.5))
    texture = rng.normal(0, 12, (size, size, 1))
    image = np.where(mask[..., None], colour + rng.uniform(-30, 30, 3) + texture, image)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8).transpose(2, 0, 1), mask


def make_synthetic_clutter(n: int, size: int, num_classes: int, rng: np.random.Generator):
    """n images (uint8 n x 3 x size x size), balanced labels (int64) and object masks (bool n x size x size)."""
    if num_classes > len(SHAPES):
        raise DataError(f"synthetic-clutter: num_classes {num_classes} exceeds the {len(SHAPES)} shapes "
                        f"({', '.join(SHAPES)})")
    names = list(SHAPES)[:num_classes]
    y = rng.permutation(np.arange(n) % num_classes).astype(np.int64)
    x = np.empty((n, 3, size, size), np.uint8)
    masks = np.empty((n, size, size), bool)
    for i, label in enumerate(y):
        x[i], masks[i] = _clutter_image(rng, size, names[label], CLASS_COLOURS[label])
    return x, y, masks


def read_synthetic_clutter(spec: dict, repo_root: Path, pick) -> dict:
    # Independent streams per split: n_train does not change the test images.
    train_rng, test_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(spec["seed"]).spawn(2))
    out = {"class_names": list(SHAPES)[:spec["num_classes"]], "found_at": "generated", "inputs": {}}
    for split, rng in (("train", train_rng), ("test", test_rng)):
        x, y, mask = make_synthetic_clutter(spec[f"n_{split}"], spec["image_size"], spec["num_classes"], rng)
        keep = pick(y, split)
        out[f"x_{split}"], out[f"y_{split}"], out[f"mask_{split}"] = x[keep], y[keep], mask[keep]
    return out


READERS = {
    "digits": read_digits,
    "fashion-mnist": readers.read_fashion_mnist,
    "synthetic-clutter": read_synthetic_clutter,
    "cifar10": lambda spec, root, pick: readers.read_cifar("cifar10", spec, root, pick),
    "cifar100": lambda spec, root, pick: readers.read_cifar("cifar100", spec, root, pick),
    "tiny-imagenet": readers.read_tiny_imagenet,
    "imagefolder": readers.read_imagefolder,
}


# ---------------------------------------------------------------- the prepared form

def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> str:
    """np.savez's layout with fixed member timestamps (same data, same hash), written atomically; returns its sha256."""
    with atomic_path(path) as tmp:
        with zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
            for key in sorted(arrays):
                info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.ascontiguousarray(arrays[key]), allow_pickle=False)
        digest = sha256_file(tmp)
    return digest


def _check_arrays(name: str, arrays: dict, num_classes: int) -> None:
    for split in ("train", "test"):
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or y.dtype != np.int64 or y.shape != (len(x),):
            raise DataError(f"datasets.{name}: reader returned x_{split} {x.dtype} {x.shape}, "
                            f"y_{split} {y.dtype} {y.shape}")
        if len(y) == 0:
            raise DataError(f"datasets.{name}: the {split} split is empty")
        if y.min() < 0 or y.max() >= num_classes:
            raise DataError(f"datasets.{name}: y_{split} has labels outside 0..{num_classes - 1}")
    if arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"datasets.{name}: train images are {arrays['x_train'].shape[1:]} but test images "
                        f"{arrays['x_test'].shape[1:]}")


def prepare(name: str, spec: dict, out_dir: Path, repo_root: Path, dvc_hash: str = "") -> dict:
    """Read dataset `name` as `spec` says, write out_dir/data.npz and out_dir/manifest.json; return the manifest.

    dvc_hash: data.dvc's hash of data/ (the DVC data version), recorded as is; '' for none."""
    spec = resolve_spec(name, spec)
    out_dir, repo_root = Path(out_dir), Path(repo_root)
    raw = READERS[spec["source"]](spec, repo_root, make_picker(spec))
    arrays = {k: v for k, v in raw.items() if k.startswith(("x_", "y_", "mask_"))}
    num_classes = len(raw["class_names"])
    _check_arrays(name, arrays, num_classes)
    out_dir.mkdir(parents=True, exist_ok=True)
    data_version = _write_npz(out_dir / "data.npz", arrays)
    manifest = {
        "format": FORMAT,
        "name": name,
        "source": spec["source"],
        "class_names": raw["class_names"],
        "num_classes": num_classes,
        "shape": list(arrays["x_train"].shape[1:]),
        "n_train": len(arrays["y_train"]),
        "n_test": len(arrays["y_test"]),
        "class_counts": {split: np.bincount(arrays[f"y_{split}"], minlength=num_classes).tolist()
                         for split in ("train", "test")},
        "has_mask": "mask_test" in arrays,
        "found_at": raw["found_at"],
        "inputs": dict(sorted(raw["inputs"].items())),
        "data_version": data_version,
        "dvc_hash": dvc_hash or None,
        "spec": spec,
    }
    write_json(out_dir / "manifest.json", manifest)
    return manifest


@dataclass(frozen=True)
class Prepared:
    x_train: torch.Tensor  # uint8 N x C x H x W
    y_train: torch.Tensor  # int64 N
    x_test: torch.Tensor
    y_test: torch.Tensor
    mask_train: torch.Tensor | None  # bool N x H x W, synthetic-clutter only
    mask_test: torch.Tensor | None
    class_names: list[str]
    manifest: dict


def load_prepared(out_dir: Path) -> Prepared:
    """The prepared arrays as tensors, after checking data.npz against the manifest's data_version."""
    out_dir = Path(out_dir)
    manifest_path, npz_path = out_dir / "manifest.json", out_dir / "data.npz"
    try:
        manifest = json.loads(manifest_path.read_text())
        actual = sha256_file(npz_path)
    except FileNotFoundError as err:
        raise DataError(f"{err.filename} does not exist: run prepare for this dataset first") from None
    except json.JSONDecodeError as err:
        raise DataError(f"{manifest_path}: not valid JSON ({err})") from None
    if actual != manifest.get("data_version"):
        raise DataError(f"{npz_path}: sha256 {actual} does not match the manifest's data_version "
                        f"{manifest.get('data_version')}: the file changed after prepare; prepare it again")
    with np.load(npz_path, allow_pickle=False) as npz:
        arrays = {key: torch.from_numpy(npz[key]) for key in npz.files}
    return Prepared(x_train=arrays["x_train"], y_train=arrays["y_train"],
                    x_test=arrays["x_test"], y_test=arrays["y_test"],
                    mask_train=arrays.get("mask_train"), mask_test=arrays.get("mask_test"),
                    class_names=manifest["class_names"], manifest=manifest)
