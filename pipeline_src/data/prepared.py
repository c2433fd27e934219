"""Datasets in one prepared form: `prepare` turns a dataset spec into out_dir/data.npz + manifest.json,
`load_prepared` reads it back after checking the npz against the manifest's sha256.

data.npz holds x_train, x_test (uint8, N x C x H x W), y_train, y_test (int64) and, for
synthetic-clutter, mask_train, mask_test (bool, N x H x W: where the object is). Its bytes depend only
on its arrays (fixed zip timestamps), so `data_version` is the same wherever the same data is prepared.
File formats have one reader each (fashion_mnist.py, cifar.py, image_folders.py), the generated sources (sklearn digits, synthetic clutter) in generated.py.

A streamed image folder (spec `streaming`) keeps its pixels in its files: data.npz then holds, per split,
files_<split> (paths relative to the split's folder), y_<split>, bytes_<split> and sha256_<split>, the
manifest names the folders, and load_prepared gives ImageStreams (stream.py) instead of tensors.
"""
from __future__ import annotations

import json
import zipfile
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path

import numpy as np
import torch

from pipeline_src.data import generated

from pipeline_src.data import cifar, fashion_mnist, image_folders
from pipeline_src.fileio import atomic_path, write_json
from pipeline_src.data.files import DataError, sha256_file
from pipeline_src.spec.datasets import resolve_spec
from pipeline_src.data.stream import ImageStream

__all__ = ["DataError", "Prepared", "PreparedFiles", "prepare", "load_prepared", "resolve_spec"]

FORMAT = "pipeline_src.data/1"  # the manifest format's name, kept from before the stage packages

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


READERS = {
    "digits": generated.read_digits,
    "fashion-mnist": fashion_mnist.read_fashion_mnist,
    "synthetic-clutter": generated.read_synthetic_clutter,
    "cifar10": lambda spec, root, pick: cifar.read_cifar("cifar10", spec, root, pick),
    "cifar100": lambda spec, root, pick: cifar.read_cifar("cifar100", spec, root, pick),
    "tiny-imagenet": image_folders.read_tiny_imagenet,
    "imagefolder": image_folders.read_imagefolder,
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
        y = arrays[f"y_{split}"]
        if f"files_{split}" in arrays:  # streamed: checked when decoded
            if y.dtype != np.int64 or y.shape != arrays[f"files_{split}"].shape:
                raise DataError(f"datasets.{name}: reader returned {len(arrays[f'files_{split}'])} files and "
                                f"y_{split} {y.dtype} {y.shape}")
            if len(y) == 0:
                raise DataError(f"datasets.{name}: the {split} split is empty")
            continue
        x = arrays[f"x_{split}"]
        if x.dtype != np.uint8 or x.ndim != 4 or y.dtype != np.int64 or y.shape != (len(x),):
            raise DataError(f"datasets.{name}: reader returned x_{split} {x.dtype} {x.shape}, "
                            f"y_{split} {y.dtype} {y.shape}")
        if len(y) == 0:
            raise DataError(f"datasets.{name}: the {split} split is empty")
        if y.min() < 0 or y.max() >= num_classes:
            raise DataError(f"datasets.{name}: y_{split} has labels outside 0..{num_classes - 1}")
    if "x_train" in arrays and arrays["x_train"].shape[1:] != arrays["x_test"].shape[1:]:
        raise DataError(f"datasets.{name}: train images are {arrays['x_train'].shape[1:]} but test images "
                        f"{arrays['x_test'].shape[1:]}")


class PreparedFiles(NamedTuple):
    """The two files of a prepared dataset; a folder stands for its data.npz and manifest.json."""

    data: Path
    manifest: Path

    @classmethod
    def of(cls, where: "Path | str | PreparedFiles") -> "PreparedFiles":
        if isinstance(where, PreparedFiles):
            return where
        return cls(Path(where) / "data.npz", Path(where) / "manifest.json")


def streams(spec: dict, repo_root: Path, pick) -> bool:
    """Whether a resolved spec is prepared for streaming: an image folder with streaming true, or auto and
    a decoded size over stream_over_mb."""
    if spec["source"] != "imagefolder" or spec["streaming"] is False:
        return False
    if spec["streaming"] is True:
        return True
    listed = image_folders.imagefolder_items(spec, repo_root, pick)
    decoded_bytes = (len(listed["train"]) + len(listed["test"])) * 3 * spec["image_size"] ** 2
    return decoded_bytes > spec["stream_over_mb"] * 2 ** 20


def prepare(name: str, spec: dict, out: "Path | PreparedFiles", repo_root: Path, dvc_hash: str = "") -> dict:
    """Read dataset `name` as `spec` says, write its data.npz and manifest.json; return the manifest.

    out: the two file paths, or a folder for both. dvc_hash: the hash of the DVC file covering the
    dataset's raw files (derived from data.dvc), recorded as is; '' for none."""
    spec = resolve_spec(name, spec)
    files, repo_root = PreparedFiles.of(out), Path(repo_root)
    pick = make_picker(spec)
    streaming = streams(spec, repo_root, pick)
    if streaming:
        raw = image_folders.index_imagefolder(spec, repo_root, pick)
        arrays = {k: v for k, v in raw.items() if k.startswith(("files_", "y_", "bytes_", "sha256_"))}
        shape = [3, spec["image_size"], spec["image_size"]]
    else:
        raw = READERS[spec["source"]](spec, repo_root, pick)
        arrays = {k: v for k, v in raw.items() if k.startswith(("x_", "y_", "mask_"))}
        shape = list(arrays["x_train"].shape[1:])
    num_classes = len(raw["class_names"])
    _check_arrays(name, arrays, num_classes)
    data_version = _write_npz(files.data, arrays)
    manifest = {
        "format": FORMAT,
        "name": name,
        "source": spec["source"],
        "class_names": raw["class_names"],
        "num_classes": num_classes,
        "shape": shape,
        "n_train": len(arrays["y_train"]),
        "n_test": len(arrays["y_test"]),
        "class_counts": {split: np.bincount(arrays[f"y_{split}"], minlength=num_classes).tolist()
                         for split in ("train", "test")},
        "has_mask": "mask_test" in arrays,
        "streaming": streaming,
        **({"folders": raw["folders"], "file_bytes": {split: int(arrays[f"bytes_{split}"].sum())
                                                      for split in ("train", "test")}} if streaming else {}),
        "found_at": raw["found_at"],
        "inputs": dict(sorted(raw["inputs"].items())),
        "data_version": data_version,
        "dvc_hash": dvc_hash or None,
        "spec": spec,
    }
    write_json(files.manifest, manifest)
    return manifest


@dataclass(frozen=True)
class Prepared:
    x_train: "torch.Tensor | ImageStream"  # uint8 N x C x H x W, or the same decoded batch by batch
    y_train: torch.Tensor  # int64 N
    x_test: "torch.Tensor | ImageStream"
    y_test: torch.Tensor
    mask_train: torch.Tensor | None  # bool N x H x W, synthetic-clutter only
    mask_test: torch.Tensor | None
    class_names: list[str]
    manifest: dict


def load_prepared(where: "Path | PreparedFiles", workers: int = 1) -> Prepared:
    """The prepared arrays as tensors, after checking data.npz against the manifest's data_version.
    A streamed dataset gives ImageStreams for x, each decoding with `workers` threads."""
    npz_path, manifest_path = PreparedFiles.of(where)
    # both files are the prepare_data rule's outputs: once one is gone, Snakemake prepares the dataset anew
    reprepare = (f"re-prepare it: delete {npz_path} and run Snakemake again (its prepare_data job writes it "
                 f"and {manifest_path.name} anew; the runs on it train again)")
    try:
        manifest = json.loads(manifest_path.read_text())
        actual = sha256_file(npz_path)
    except FileNotFoundError as err:
        raise DataError(f"{err.filename} does not exist: run prepare for this dataset first") from None
    except ValueError as err:  # json.JSONDecodeError, or bytes that are not text
        raise DataError(f"{manifest_path}: not valid JSON ({' '.join(str(err).split())}); {reprepare}") from None
    expected = manifest.get("data_version") if isinstance(manifest, dict) else None
    if actual != expected:
        raise DataError(f"{npz_path}: sha256 {actual} does not match the manifest's data_version {expected}: the "
                        f"file changed or was cut short after prepare; {reprepare}")
    with np.load(npz_path, allow_pickle=False) as npz:
        if manifest.get("streaming"):
            arrays = {key: torch.from_numpy(npz[key]) for key in npz.files if key.startswith("y_")}
            decode = image_folders.ImageDecode.of(manifest["spec"])
            for split in ("train", "test"):
                arrays[f"x_{split}"] = ImageStream(manifest["folders"][split], npz[f"files_{split}"], decode, workers)
        else:
            arrays = {key: torch.from_numpy(npz[key]) for key in npz.files}
    return Prepared(x_train=arrays["x_train"], y_train=arrays["y_train"],
                    x_test=arrays["x_test"], y_test=arrays["y_test"],
                    mask_train=arrays.get("mask_train"), mask_test=arrays.get("mask_test"),
                    class_names=manifest["class_names"], manifest=manifest)
