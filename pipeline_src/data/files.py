"""What every raw-file reader shares: the one-line DataError, file hashes, where a source's files are
looked for, and manifest labels.

The readers, one per format (fashion_mnist.py, cifar.py, image_folders.py), each give
`read_<source>(spec, repo_root, pick)`: a dict with x_train/x_test (uint8, N x C x H x W),
y_train/y_test (int64), class_names, found_at (where the files were found) and inputs
({path: sha256} of every file read). `pick(labels, split)` returns the indices to keep (the seeded
per-class subsample); image sources call it on the file listing, so a subsample never decodes the
rest. Archives are read in place rather than extracted, so no member can land outside a folder.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

# defined in spec, so that preflight checks data without importing a reader
from pipeline_src.spec.datasets import DataError  # noqa: F401

DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")

def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def resolve_path(value: str | Path, repo_root: Path) -> Path:
    """Spec paths are relative to the repository root, so a params file means the same anywhere."""
    path = Path(value).expanduser()
    return path if path.is_absolute() else Path(repo_root) / path


def input_label(path: Path, repo_root: Path) -> str:
    """Manifest key for an input file: repo-relative when possible, so manifests compare across clones."""
    path = Path(path).absolute()
    try:
        return path.relative_to(Path(repo_root).absolute()).as_posix()
    except ValueError:
        return path.as_posix()


def search_places(spec: dict, repo_root: Path) -> list[Path]:
    """Where a file source is looked for, in order: the spec's path, data/raw/<source>, and for
    Fashion-MNIST Debian's dataset-fashion-mnist (dvcdata.py lists the same places)."""
    places = [resolve_path(spec["path"], repo_root)] if spec.get("path") else []
    places.append(Path(repo_root) / "data" / "raw" / spec["source"])
    return places + ([DEBIAN_FASHION_MNIST] if spec["source"] == "fashion-mnist" else [])


def imagefolder_dirs(spec: dict, repo_root: Path) -> dict[str, Path]:
    """imagefolder's train and test folders: train_dir / test_dir, else <path>/train and <path>/val."""
    base = resolve_path(spec["path"], repo_root) if spec.get("path") else None
    dirs = {}
    for split, key, default in (("train", "train_dir", "train"), ("test", "test_dir", "val")):
        if spec.get(key):
            dirs[split] = resolve_path(spec[key], base or repo_root)
        elif base is not None:
            dirs[split] = base / default
    return dirs
