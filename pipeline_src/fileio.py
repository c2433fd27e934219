"""The pipeline's files on disk: every write is atomic (a reader never sees half a file, a failed write
leaves the old file in place), and a damaged file read back is one error naming it and the remedy.

Torch, pandas and matplotlib are imported inside the functions that need them: the DAG build imports
this module and stays torch-free."""
from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def atomic_path(path: str | Path):
    """A temporary path beside `path` that becomes `path` only if the block succeeds.

    Readers never see half a file, and a failed write leaves the old file in place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, path.stat().st_mode & 0o777 if path.exists() else 0o644)  # mkstemp made it 0600
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def save_figure(fig, path: Path) -> None:
    """A matplotlib figure as PNG, written atomically; the figure is closed either way."""
    import matplotlib.pyplot as plt  # here, so that nothing but figure drawing pays for matplotlib

    try:
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")
    finally:
        plt.close(fig)


def write_atomic(path: str | Path, data: str | bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


def read_json(path: str | Path, remedy: str):
    """A JSON file's content. A damaged one (cut short, overwritten) is a ValueError naming the file, what
    is wrong with it and `remedy`, what to do; a missing one stays a FileNotFoundError."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except ValueError as err:  # json.JSONDecodeError, and UnicodeDecodeError for bytes that are not text
        raise ValueError(f"{path}: not valid JSON ({_first_line(err)}); {remedy}") from None


def read_csv(path: str | Path, remedy: str, **kwargs):
    """pandas.read_csv, with a damaged table a ValueError naming the file, what is wrong and `remedy`."""
    import pandas as pd

    try:
        return pd.read_csv(path, **kwargs)
    except ValueError as err:  # pandas' ParserError and EmptyDataError are ValueErrors, as is a bad encoding
        raise ValueError(f"{path}: not a readable CSV table ({_first_line(err)}); {remedy}") from None


def _first_line(err: BaseException) -> str:
    return (str(err).strip().splitlines() or [type(err).__name__])[0]


def write_json(path: str | Path, obj) -> None:
    write_atomic(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def torch_load(path: str | Path, remedy: str):
    """torch.load of a file of tensors (weights_only: nothing else is unpickled), on the CPU. An unreadable
    one (cut short, not PyTorch's, holding other objects) is a ValueError naming the file, what is wrong
    and `remedy`, what to do; a missing one stays a FileNotFoundError."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # noqa: BLE001 - RuntimeError (PytorchStreamReader), EOFError, UnpicklingError, ...
        raise ValueError(f"{path}: not a readable PyTorch file ({' '.join(str(err).split())[:200] or type(err).__name__}); "
                         f"{remedy}") from None


def torch_save_atomic(obj, path: str | Path) -> None:
    import torch

    with atomic_path(path) as tmp:
        torch.save(obj, tmp)
