"""Fashion-MNIST's IDX files (gzipped or not), from the spec's path, data/raw/fashion-mnist or Debian's dataset-fashion-mnist."""
from __future__ import annotations

import gzip
import hashlib
import struct
import urllib.request
import zlib
from pathlib import Path

import numpy as np

from pipeline_src.fileio import write_atomic
from pipeline_src.data.files import DataError, input_label, search_places, sha256_file

_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def parse_idx(raw: bytes, name: str) -> np.ndarray:
    """IDX: two zero bytes, a dtype code, the number of dims, big-endian uint32 dims, then the data."""
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise DataError(f"{name}: not an IDX file (bad magic number 0x{raw[:4].hex()})")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{name}: IDX header is truncated")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = header + int(np.prod(dims, dtype=np.int64)) * dtype.itemsize
    if len(raw) != expected:
        raise DataError(f"{name}: size mismatch: header says shape {dims} ({expected} bytes) "
                        f"but the file holds {len(raw)} bytes (truncated or corrupt)")
    return np.frombuffer(raw, dtype, offset=header).reshape(dims).astype(dtype.newbyteorder("="))


def read_idx(path: Path) -> np.ndarray:
    """An IDX file, gzip-compressed or not (decided by content, not by name)."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise DataError(f"{path}: corrupt or truncated gzip file ({err})") from None
    return parse_idx(raw, str(path))


FASHION_MNIST_CLASSES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
FASHION_MNIST_FILES = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                       "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]
# md5 of the .gz files as published by Zalando; checks a download only: Debian's package re-gzips
# the same content (different gzip header), so its .gz files have other checksums.
FASHION_MNIST_MD5 = {
    "train-images-idx3-ubyte": "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
    "train-labels-idx1-ubyte": "25c81989df183df01b3e8a0aad5dffbe",
    "t10k-images-idx3-ubyte": "bef4ecab320f06d8554ea6380940ec79",
    "t10k-labels-idx1-ubyte": "bb300cfdad3c16e7a12a480ee83cd310",
}
FASHION_MNIST_URL = "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"


def _find_idx_files(folder: Path) -> list[Path] | None:
    found = []
    for stem in FASHION_MNIST_FILES:
        candidates = [folder / f"{stem}.gz", folder / stem]
        hit = next((c for c in candidates if c.is_file()), None)
        if hit is None:
            return None
        found.append(hit)
    return found


def download_fashion_mnist(dest: Path, base_url: str = FASHION_MNIST_URL, timeout: float = 30) -> None:
    """Fetch the four .gz files into dest, each checked against its published md5."""
    for stem, md5 in FASHION_MNIST_MD5.items():
        target = dest / f"{stem}.gz"
        if target.is_file():
            continue
        with urllib.request.urlopen(base_url + target.name, timeout=timeout) as response:
            payload = response.read()
        if hashlib.md5(payload).hexdigest() != md5:
            raise DataError(f"{base_url + target.name}: downloaded file does not have the published md5 {md5}")
        dest.mkdir(parents=True, exist_ok=True)
        write_atomic(target, payload)


def read_fashion_mnist(spec: dict, repo_root: Path, pick) -> dict:
    local = Path(repo_root) / "data" / "raw" / "fashion-mnist"
    places = search_places(spec, repo_root)
    files = next((f for f in map(_find_idx_files, places) if f), None)
    if files is None:
        try:
            download_fashion_mnist(local)
        except (OSError, DataError) as err:  # URLError is an OSError; offline lands here
            raise DataError(
                f"fashion-mnist: the files {', '.join(s + '.gz' for s in FASHION_MNIST_FILES)} were not found "
                f"in {', '.join(map(str, places))} and the download from {FASHION_MNIST_URL} failed ({err}); "
                f"run `apt-get install dataset-fashion-mnist` or put the 4 files into {local}/") from None
        files = _find_idx_files(local)
    out = {"class_names": FASHION_MNIST_CLASSES, "found_at": str(files[0].parent),
           "inputs": {input_label(f, repo_root): sha256_file(f) for f in files}}
    for split, (images_path, labels_path) in (("train", files[:2]), ("test", files[2:])):
        images, labels = read_idx(images_path), read_idx(labels_path)
        if images.dtype != np.uint8 or images.ndim != 3:
            raise DataError(f"{images_path}: expected uint8 images N x H x W, got {images.dtype} {images.shape}")
        if labels.ndim != 1 or len(labels) != len(images):
            raise DataError(f"{labels_path}: expected {len(images)} labels, got shape {labels.shape}")
        if labels.size and labels.max() >= len(FASHION_MNIST_CLASSES):
            raise DataError(f"{labels_path}: label {labels.max()} is outside 0..9")
        keep = pick(labels.astype(np.int64), split)
        out[f"x_{split}"] = images[keep, None]
        out[f"y_{split}"] = labels[keep].astype(np.int64)
    return out
