"""The dataset sources params can name, the keys each reads, and the input shape each yields,
known without reading any data or importing torch (the DAG build checks models against it).
"""
from __future__ import annotations

import copy

from pipeline_src.readers import DataError

# Keys each source reads besides source, seed (subsampling and any split) and subsample_per_class;
# any other key is rejected, so a key that would be silently ignored fails at once.
SOURCE_DEFAULTS = {
    "digits": {"test_fraction": 0.25},
    "fashion-mnist": {"path": None},
    "synthetic-clutter": {"image_size": 32, "num_classes": 4, "n_train": 400, "n_test": 200},
    "cifar10": {"path": None},
    "cifar100": {"path": None},
    "tiny-imagenet": {"path": None, "image_size": 64},
    "imagefolder": {"path": None, "train_dir": None, "test_dir": None, "image_size": 224},
}
SPLITS = ("train", "test")


def resolve_spec(name: str, spec: dict) -> dict:
    """The spec with this source's defaults filled in; unknown sources and keys are errors."""
    source = spec.get("source")
    if source not in SOURCE_DEFAULTS:
        raise DataError(f"datasets.{name}: unknown source {source!r}; known: {', '.join(SOURCE_DEFAULTS)}")
    allowed = {"source", "seed", "subsample_per_class"} | set(SOURCE_DEFAULTS[source])
    extra = sorted(set(spec) - allowed)
    if extra:
        raise DataError(f"datasets.{name}: key(s) {', '.join(extra)} do not apply to source {source!r}; "
                        f"allowed: {', '.join(sorted(allowed))}")
    resolved = {"seed": 0, **copy.deepcopy(SOURCE_DEFAULTS[source]), **copy.deepcopy(spec)}
    unknown_splits = sorted(set(resolved.get("subsample_per_class") or {}) - set(SPLITS))
    if unknown_splits:
        raise DataError(f"datasets.{name}.subsample_per_class: unknown split(s) {unknown_splits}; use train, test")
    return {k: v for k, v in resolved.items() if v is not None}


def input_shape(spec: dict) -> tuple[int, int, int]:
    """(channels, height, width) of the prepared images of a resolved dataset spec."""
    source = spec["source"]
    if source in ("digits", "fashion-mnist"):
        return (1, 8, 8) if source == "digits" else (1, 28, 28)
    if source in ("cifar10", "cifar100"):
        return 3, 32, 32
    return 3, spec["image_size"], spec["image_size"]
