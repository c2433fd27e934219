"""CIFAR-10 and CIFAR-100 in their python-pickle archives, read in place and unpickled with only the globals a batch needs."""
from __future__ import annotations

import codecs
import hashlib
import io
import pickle
import tarfile
import zlib
from pathlib import Path

import numpy as np

from pipeline_src.data.files import DataError, input_label, search_places, sha256_file

def _only_latin1(text: str, encoding: str = "utf-8") -> bytes:
    # Protocol-2 pickles store bytes as _codecs.encode(text, 'latin1'); allow nothing else through it.
    if encoding != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with encoding {encoding!r} is not allowed")
    return codecs.encode(text, "latin1")


# Exactly what a CIFAR batch (a dict of lists, bytes and one uint8 array) needs to be rebuilt, taken
# from the running numpy so that numpy.core and numpy._core pickles both resolve.
_RECONSTRUCT = np.zeros(1).__reduce__()[0]
_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]
_SCALAR = np.float64(0).__reduce__()[0]
_PICKLE_GLOBALS = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
                   ("_codecs", "encode"): _only_latin1}
for _core in ("numpy.core", "numpy._core"):
    _PICKLE_GLOBALS[(f"{_core}.multiarray", "_reconstruct")] = _RECONSTRUCT
    _PICKLE_GLOBALS[(f"{_core}.multiarray", "scalar")] = _SCALAR
    _PICKLE_GLOBALS[(f"{_core}.numeric", "_frombuffer")] = _FROMBUFFER
for _builtins in ("builtins", "__builtin__"):
    for _name, _obj in (("list", list), ("dict", dict), ("tuple", tuple), ("set", set), ("bytearray", bytearray)):
        _PICKLE_GLOBALS[(_builtins, _name)] = _obj


class _RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return _PICKLE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a dataset pickle") from None


def unpickle_restricted(payload: bytes, name: str):
    try:
        return _RestrictedUnpickler(io.BytesIO(payload), encoding="bytes").load()
    except Exception as err:  # a corrupt pickle can fail in many ways; all mean the same here
        raise DataError(f"{name}: cannot unpickle ({type(err).__name__}: {err})") from None


_CIFAR = {
    "cifar10": {"archive": "cifar-10-python.tar.gz", "folder": "cifar-10-batches-py", "meta": "batches.meta",
                "train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"],
                "labels": b"labels", "names": b"label_names"},
    "cifar100": {"archive": "cifar-100-python.tar.gz", "folder": "cifar-100-python", "meta": "meta",
                 "train": ["train"], "test": ["test"], "labels": b"fine_labels", "names": b"fine_label_names"},
}


def _locate_cifar(source: str, spec: dict, repo_root: Path) -> tuple[str, Path]:
    layout = _CIFAR[source]
    places = search_places({**spec, "source": source}, repo_root)
    for place in places:
        if place.is_file():
            return "tar", place
        if (place / layout["archive"]).is_file():
            return "tar", place / layout["archive"]
        for folder in (place / layout["folder"], place):
            if (folder / layout["meta"]).is_file():
                return "dir", folder
    raise DataError(f"{source}: neither {layout['archive']} nor an extracted {layout['folder']}/ was found in "
                    f"{', '.join(map(str, places))}; put one of them into {places[-1]}/ or set `path`")


def read_cifar(source: str, spec: dict, repo_root: Path, pick) -> dict:
    layout = _CIFAR[source]
    kind, location = _locate_cifar(source, spec, repo_root)
    wanted = [layout["meta"]] + layout["train"] + layout["test"]
    if kind == "tar":
        try:
            with tarfile.open(location, "r:*") as tar:
                payloads = {}
                for file in wanted:
                    member = tar.getmember(f"{layout['folder']}/{file}")
                    if not member.isfile():
                        raise DataError(f"{location}: member {member.name} is not a regular file")
                    payloads[file] = tar.extractfile(member).read()
        except KeyError as err:
            raise DataError(f"{location}: archive lacks member {err.args[0]}") from None
        except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
            raise DataError(f"{location}: unreadable tar archive ({err})") from None
        inputs = {input_label(location, repo_root): sha256_file(location)}
        names = {file: f"{location}:{layout['folder']}/{file}" for file in wanted}
    else:
        missing = [f for f in wanted if not (location / f).is_file()]
        if missing:
            raise DataError(f"{location}: missing {', '.join(missing)}")
        payloads = {file: (location / file).read_bytes() for file in wanted}
        inputs = {input_label(location / f, repo_root): hashlib.sha256(p).hexdigest() for f, p in payloads.items()}
        names = {file: str(location / file) for file in wanted}

    meta = unpickle_restricted(payloads[layout["meta"]], names[layout["meta"]])
    if not isinstance(meta, dict) or layout["names"] not in meta:
        raise DataError(f"{names[layout['meta']]}: no {layout['names'].decode()} entry")
    class_names = [n.decode() if isinstance(n, bytes) else str(n) for n in meta[layout["names"]]]
    out = {"class_names": class_names, "found_at": str(location), "inputs": inputs}
    for split in ("train", "test"):
        xs, ys = [], []
        for file in layout[split]:
            batch = unpickle_restricted(payloads[file], names[file])
            data = batch.get(b"data") if isinstance(batch, dict) else None
            labels = np.asarray(batch.get(layout["labels"], []) if isinstance(batch, dict) else [], np.int64)
            if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.shape[1:] != (3072,):
                raise DataError(f"{names[file]}: b'data' must be a uint8 array N x 3072")
            top = len(class_names) - 1
            if labels.shape != (len(data),) or (labels.size and not 0 <= labels.min() <= labels.max() <= top):
                raise DataError(f"{names[file]}: {layout['labels'].decode()} must be {len(data)} ints in 0..{top}")
            xs.append(data)
            ys.append(labels)
        y = np.concatenate(ys)
        keep = pick(y, split)
        # Each row holds the red, green then blue 32x32 planes, so it is already channel-first.
        out[f"x_{split}"] = np.concatenate(xs)[keep].reshape(-1, 3, 32, 32)
        out[f"y_{split}"] = y[keep]
    return out
