"""Writers for tiny dataset files in the published formats, used by test_data.py."""
from __future__ import annotations

import gzip
import io
import pickle
import struct
import tarfile
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

FASHION_STEMS = ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                 "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]


def idx_bytes(array: np.ndarray) -> bytes:
    codes = {np.dtype(np.uint8): 0x08, np.dtype(np.int32): 0x0C}
    header = bytes([0, 0, codes[array.dtype], array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_fashion(folder: Path, rng: np.random.Generator, n_train=30, n_test=20, gz=True) -> dict:
    """The four Fashion-MNIST IDX files (small, 28x28); returns the arrays written."""
    folder.mkdir(parents=True, exist_ok=True)
    arrays = {"x_train": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
              "y_train": (np.arange(n_train) % 10).astype(np.uint8),
              "x_test": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
              "y_test": (np.arange(n_test) % 10).astype(np.uint8)}
    for stem, key in zip(FASHION_STEMS, ["x_train", "y_train", "x_test", "y_test"]):
        payload = idx_bytes(arrays[key])
        if gz:
            (folder / f"{stem}.gz").write_bytes(gzip.compress(payload))
        else:
            (folder / stem).write_bytes(payload)
    return arrays


def _add_bytes(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def _as_old_numpy(payload: bytes) -> bytes:
    # The published batches name numpy.core.multiarray (numpy 2 writes numpy._core); protocol 2 spells
    # globals as text lines, so the swap keeps the pickle valid.
    return payload.replace(b"cnumpy._core.multiarray\n", b"cnumpy.core.multiarray\n")


def cifar_files(source: str, rng: np.random.Generator, per_batch=6) -> tuple[dict[str, bytes], dict]:
    """Pickled CIFAR batch files as {file name: bytes} (protocol 2, like the originals) and the arrays in them."""
    num_classes = 10 if source == "cifar10" else 100
    label_key, names_key = (b"labels", b"label_names") if source == "cifar10" else (b"fine_labels", b"fine_label_names")
    train_files = [f"data_batch_{i}" for i in range(1, 6)] if source == "cifar10" else ["train"]
    files, expected = {}, {"train": [], "test": []}
    for split, names in (("train", train_files), ("test", ["test_batch" if source == "cifar10" else "test"])):
        for file in names:
            data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
            labels = rng.integers(0, num_classes, per_batch).tolist()
            batch = {b"batch_label": file.encode(), b"data": data, label_key: labels,
                     b"filenames": [f"img_{i}.png".encode() for i in range(per_batch)]}
            if source == "cifar100":
                batch[b"coarse_labels"] = [lab // 5 for lab in labels]
            files[file] = _as_old_numpy(pickle.dumps(batch, protocol=2))
            expected[split].append((data, labels))
    class_names = [f"class_{i}".encode() for i in range(num_classes)]
    meta = {names_key: class_names, b"num_cases_per_batch": per_batch}
    files["batches.meta" if source == "cifar10" else "meta"] = pickle.dumps(meta, protocol=2)
    out = {"class_names": [n.decode() for n in class_names]}
    for split in ("train", "test"):
        out[f"x_{split}"] = np.concatenate([d for d, _ in expected[split]]).reshape(-1, 3, 32, 32)
        out[f"y_{split}"] = np.array([lab for _, labs in expected[split] for lab in labs], np.int64)
    return files, out


def write_cifar_tarball(path: Path, source: str, files: dict[str, bytes]) -> None:
    folder = "cifar-10-batches-py" if source == "cifar10" else "cifar-100-python"
    with tarfile.open(path, "w:gz") as tar:
        for file, payload in files.items():
            _add_bytes(tar, f"{folder}/{file}", payload)


def image_bytes(array_hwc: np.ndarray, fmt: str) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(array_hwc).save(buffer, format=fmt)
    return buffer.getvalue()


def decoded(payload: bytes) -> np.ndarray:
    """What an image file decodes to, RGB, channel-first: the reference a loader must match."""
    return np.asarray(Image.open(io.BytesIO(payload)).convert("RGB")).transpose(2, 0, 1)


def write_tiny_imagenet_zip(path: Path, rng: np.random.Generator, wnids=("n03", "n01", "n02"),
                            n_train=3, n_val=2) -> dict:
    """A tiny-imagenet-200.zip with 64x64 JPEGs (one grayscale); returns {member: (bytes, wnid)} per split."""
    members = {"train": {}, "val": {}}
    annotations = []
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("tiny-imagenet-200/wnids.txt", "\n".join(wnids) + "\n")
        archive.writestr("tiny-imagenet-200/words.txt",
                         "".join(f"{w}\tthing {w}, other name\n" for w in sorted(wnids) + ["n99"]))
        for w in wnids:
            archive.writestr(f"tiny-imagenet-200/train/{w}/{w}_boxes.txt", "")
            for i in range(n_train):
                pixels = rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)
                if w == wnids[0] and i == 0:
                    pixels = pixels[..., 0]  # Tiny ImageNet has some grayscale JPEGs
                rel = f"train/{w}/images/{w}_{i}.JPEG"
                members["train"][rel] = (image_bytes(pixels, "JPEG"), w)
        for j in range(n_val * len(wnids)):
            w = wnids[j % len(wnids)]
            rel = f"val/images/val_{j}.JPEG"
            members["val"][rel] = (image_bytes(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), "JPEG"), w)
            annotations.append(f"val_{j}.JPEG\t{w}\t0\t0\t63\t63")
        archive.writestr("tiny-imagenet-200/val/val_annotations.txt", "\n".join(annotations) + "\n")
        for split in members.values():
            for rel, (payload, _) in split.items():
                archive.writestr(f"tiny-imagenet-200/{rel}", payload)
    return members


def write_imagefolder(root: Path, rng: np.random.Generator, classes: dict[str, int], size=16) -> dict[Path, np.ndarray]:
    """root/<class>/<i>.png, RGB size x size; returns {path: channel-first pixels}."""
    written = {}
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(count):
            pixels = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            path = root / name / f"{i:03d}.png"
            path.write_bytes(image_bytes(pixels, "PNG"))
            written[path] = pixels.transpose(2, 0, 1)
    return written
