"""A dataset spec resolved (its source's keys and defaults live in the schema), and the input shape
each source yields, known without reading any data or importing torch (the DAG build checks models
against it).
"""
from __future__ import annotations

from pathlib import Path

from pipeline_src.spec.schema import InputError, filled


# the four IDX files the Fashion-MNIST reader looks for, each gzipped or not (data/fashion_mnist.py, whose
# list a test holds this one to): known here so that the check needs no data module
FASHION_MNIST_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte",
                       "t10k-labels-idx1-ubyte")


class DataError(InputError):
    """A data problem, described in one line."""


def resolve_spec(name: str, spec: dict) -> dict:
    """A dataset spec checked against its source's keys, with the schema's defaults filled (DataError)."""
    try:
        return {key: value for key, value in filled(spec, "dataset").items() if key != "paper_name"}
    except ValueError as err:
        raise DataError(f"datasets.{name}: {err}") from None


def input_shape(spec: dict) -> tuple[int, int, int]:
    """(channels, height, width) of the prepared images of a resolved dataset spec."""
    source = spec["source"]
    if source in ("digits", "fashion-mnist"):
        return (1, 8, 8) if source == "digits" else (1, 28, 28)
    if source in ("cifar10", "cifar100"):
        return 3, 32, 32
    return 3, spec["image_size"], spec["image_size"]


def given_path_problem(name: str, spec: dict, repo_root: Path) -> str | None:
    """A Fashion-MNIST spec whose path does not hold its files: the reader would pass over it to its
    other places (data/raw/fashion-mnist, Debian's package) without a word, so the check says it."""
    if spec["source"] != "fashion-mnist" or not spec.get("path"):
        return None
    folder = Path(spec["path"]).expanduser()
    folder = folder if folder.is_absolute() else Path(repo_root) / folder
    missing = [stem for stem in FASHION_MNIST_FILES
               if not any((folder / f"{stem}{ext}").is_file() for ext in (".gz", ""))]
    if not missing:
        return None
    return (f"datasets.{name}.path: {spec['path']} does not hold the Fashion-MNIST files ({', '.join(missing)}, "
            "each .gz or not), and prepare would read another folder instead: point path at the folder of the "
            "four files, or remove it (data/raw/fashion-mnist is searched without it)")
