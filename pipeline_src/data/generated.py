"""The generated sources: scikit-learn's 8x8 digits and the synthetic-clutter images (a coloured shape
per class on a random background, with the object's mask), in the arrays the file readers return (files.py).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipeline_src.data.files import DataError, input_label, sha256_file


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
