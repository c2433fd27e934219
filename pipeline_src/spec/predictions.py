"""Per-image predictions of a run: one predicted label per test image and eval mode, beside metrics.json.

They let the audit put the test set's own sampling error into an interval (every seed is scored on the
same 10,000 images) and let a paired comparison see which images changed. numpy only: the results code
reads them without torch. Labels fit in uint8 up to 256 classes, uint16 beyond.
"""
from __future__ import annotations

import io
import zipfile
from pathlib import Path

import numpy as np

from pipeline_src.fileio import write_atomic

FILE_NAME = "predictions.npz"
TARGET = "target"  # the true labels, in the test set's own order


def predictions_path(metrics_path: Path) -> Path:
    """A run's predictions file sits next to its metrics.json."""
    return Path(metrics_path).with_name(FILE_NAME)


def _labels(values) -> np.ndarray:
    values = np.asarray(values)
    return values.astype(np.uint8 if values.max(initial=0) < 256 else np.uint16)


def save_predictions(path: Path, by_mode: dict, target) -> None:
    """by_mode: eval mode -> predicted labels in test-set order (any array-like, e.g. a CPU tensor)."""
    if TARGET in by_mode:
        raise ValueError(f"eval mode name {TARGET!r} is reserved for the true labels")
    target = _labels(target)
    arrays = {mode: _labels(pred) for mode, pred in by_mode.items()}
    for mode, pred in arrays.items():
        if pred.shape != target.shape:
            raise ValueError(f"eval mode {mode}: {pred.shape[0]} predictions for {target.shape[0]} test images")
    buffer = io.BytesIO()
    np.savez_compressed(buffer, **arrays, **{TARGET: target})
    write_atomic(path, buffer.getvalue())


# the evaluate rule lists the file as an output: once it is gone, Snakemake runs that job again
REMEDY = "delete it and run Snakemake again: the run's evaluate job writes it anew"


def load_predictions(path: Path) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """(eval mode -> predicted labels, true labels). A damaged file, or one holding anything but
    integer labels of the test set's length (a pickled object array is never loaded), is one line
    naming it, what is wrong and what to do; a missing one stays a FileNotFoundError."""
    try:
        with np.load(path, allow_pickle=False) as data:
            arrays = {key: data[key] for key in data.files}
    except FileNotFoundError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as err:  # numpy says "Object arrays cannot
        # be loaded when allow_pickle=False" for a pickled array, "Failed to interpret..." for other bytes
        raise ValueError(f"{path}: not a predictions file ({' '.join(str(err).split())[:200] or type(err).__name__}); "
                         f"{REMEDY}") from None
    target = arrays.pop(TARGET, None)
    if target is None:
        raise ValueError(f"{path}: holds no {TARGET!r} array (the true labels); {REMEDY}")
    for key, values in [(TARGET, target), *arrays.items()]:
        if values.dtype.kind not in "iu" or values.ndim != 1 or values.shape != target.shape:
            raise ValueError(f"{path}: array {key!r} is {values.dtype} {values.shape}, not one integer label per "
                             f"test image ({target.size}); {REMEDY}")
    return arrays, target


def correct(path: Path) -> dict[str, np.ndarray]:
    """eval mode -> bool per test image: was it classified right."""
    preds, target = load_predictions(path)
    return {mode: pred == target for mode, pred in preds.items()}
