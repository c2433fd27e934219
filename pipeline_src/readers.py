"""Raw dataset files in their published formats -> uint8 arrays.

Every `read_<source>(spec, repo_root, pick)` returns a dict with x_train/x_test (uint8, N x C x H x W),
y_train/y_test (int64), class_names, found_at (where the files were found) and inputs
({path: sha256} of every file read). `pick(labels, split)` returns the indices to keep (the seeded
per-class subsample); image sources call it on the file listing, so a subsample never decodes the
rest. Archives are read in place rather than extracted, so no member can land outside a folder.
"""
from __future__ import annotations

import codecs
import contextlib
import gzip
import hashlib
import io
import pickle
import struct
import tarfile
import urllib.request
import zipfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline_src.provenance import write_atomic


class DataError(ValueError):
    """A data problem, described in one line."""


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


# ---------------------------------------------------------------- IDX (Fashion-MNIST)

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
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


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


# ---------------------------------------------------------------- CIFAR python pickles

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


# ---------------------------------------------------------------- images (Tiny ImageNet, image folders)

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".ppm", ".pgm", ".gif", ".tif", ".tiff", ".webp"}


@dataclass(frozen=True)
class ImageDecode:
    """How an image file becomes 3 x size x size uint8 pixels: timm's evaluation transform
    (timm.data.create_transform) with the dataset's crop_pct, crop_mode and interpolation, i.e. the resize
    and crop of a timm data config; its normalisation is the model's (models.add_input_norm). The in-memory
    and the streaming path both decode through it, so they see the same pixels."""
    size: int
    crop_pct: float
    crop_mode: str
    interpolation: str

    @classmethod
    def of(cls, spec: dict) -> "ImageDecode":
        return cls(spec["image_size"], spec["crop_pct"], spec["crop_mode"], spec["interpolation"])

    @cached_property
    def transform(self):
        from timm.data import create_transform  # imported here: only image-file datasets need it

        return create_transform((3, self.size, self.size), is_training=False, crop_pct=self.crop_pct,
                                crop_mode=self.crop_mode, interpolation=self.interpolation, use_prefetcher=True)

    def __call__(self, payload: bytes, name: str) -> np.ndarray:
        try:
            with Image.open(io.BytesIO(payload)) as image:
                image = image.convert("RGB")
        except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
            raise DataError(f"{name}: cannot decode image ({err})") from None
        return self.transform(image).numpy()


def _decode_all(items: list[tuple[str, int]], read, display, decode: ImageDecode) -> tuple[np.ndarray, np.ndarray]:
    x = np.empty((len(items), 3, decode.size, decode.size), np.uint8)
    for i, (rel, _) in enumerate(items):
        x[i] = decode(read(rel), display(rel))
    return x, np.array([label for _, label in items], np.int64)


def _picked(items: list[tuple[str, int]], pick, split: str) -> list[tuple[str, int]]:
    return [items[i] for i in pick(np.array([label for _, label in items], np.int64), split)]


def _folder_reader(root: Path, inputs: dict, repo_root: Path):
    def read(rel: str) -> bytes:
        path = root / rel
        try:
            payload = path.read_bytes()
        except OSError as err:
            raise DataError(f"{path}: unreadable ({err.strerror})") from None
        inputs[input_label(path, repo_root)] = hashlib.sha256(payload).hexdigest()
        return payload
    return read


def _locate_tiny(spec: dict, repo_root: Path) -> tuple[str, Path]:
    places = search_places({**spec, "source": "tiny-imagenet"}, repo_root)
    for place in places:
        if place.is_file():
            return "zip", place
        if (place / "tiny-imagenet-200.zip").is_file():
            return "zip", place / "tiny-imagenet-200.zip"
        for folder in (place / "tiny-imagenet-200", place):
            if (folder / "wnids.txt").is_file():
                return "dir", folder
    raise DataError(f"tiny-imagenet: neither tiny-imagenet-200.zip nor an extracted tiny-imagenet-200/ was found "
                    f"in {', '.join(map(str, places))}; put one of them into {places[-1]}/ or set `path`")


def read_tiny_imagenet(spec: dict, repo_root: Path, pick) -> dict:
    kind, location = _locate_tiny(spec, repo_root)
    inputs: dict[str, str] = {}
    try:
        with contextlib.ExitStack() as stack:
            if kind == "zip":
                archive = stack.enter_context(zipfile.ZipFile(location))
                inputs[input_label(location, repo_root)] = sha256_file(location)
                names = [n for n in archive.namelist() if not n.endswith("/")]
                prefix = min((n[:-len("wnids.txt")] for n in names if n.rsplit("/", 1)[-1] == "wnids.txt"),
                             key=len, default=None)
                if prefix is None:
                    raise DataError(f"{location}: no wnids.txt in the archive")
                listing = [n[len(prefix):] for n in names if n.startswith(prefix)]
                read = lambda rel: archive.read(prefix + rel)  # noqa: E731
                display = lambda rel: f"{location}:{prefix}{rel}"  # noqa: E731
            else:
                listing = [p.relative_to(location).as_posix() for p in location.rglob("*") if p.is_file()]
                read = _folder_reader(location, inputs, repo_root)
                display = lambda rel: str(location / rel)  # noqa: E731
            return _tiny_arrays(listing, read, display, ImageDecode.of(spec), pick) | {
                "found_at": str(location), "inputs": inputs}
    except KeyError as err:  # zipfile's answer to a missing member
        raise DataError(f"{location}: missing {err.args[0]}") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as err:
        raise DataError(f"{location}: unreadable zip archive ({err})") from None


def _tiny_arrays(listing: list[str], read, display, decode: ImageDecode, pick) -> dict:
    # Class index = position in the sorted wnids, as an image folder of the same data would number them.
    wnids = sorted(read("wnids.txt").decode().split())
    index = {wnid: i for i, wnid in enumerate(wnids)}
    words = dict(line.split("\t", 1) for line in read("words.txt").decode().splitlines() if "\t" in line)
    train = []
    for rel in sorted(listing):
        parts = rel.split("/")
        is_image = Path(rel).suffix.lower() in IMAGE_SUFFIXES
        if len(parts) == 4 and parts[0] == "train" and parts[2] == "images" and is_image:
            if parts[1] not in index:
                raise DataError(f"{display(rel)}: class {parts[1]} is not listed in wnids.txt")
            train.append((rel, index[parts[1]]))
    test = []
    for line in read("val/val_annotations.txt").decode().splitlines():
        fields = line.split("\t")
        if len(fields) < 2 or fields[1] not in index:
            raise DataError(f"{display('val/val_annotations.txt')}: bad line {line!r}")
        test.append((f"val/images/{fields[0]}", index[fields[1]]))
    out = {"class_names": [words.get(w, w).strip() for w in wnids]}
    for split, items in (("train", train), ("test", sorted(test))):
        out[f"x_{split}"], out[f"y_{split}"] = _decode_all(_picked(items, pick, split), read, display, decode)
    return out


def _class_folders(folder: Path) -> dict[str, list[str]]:
    if not folder.is_dir():
        raise DataError(f"imagefolder: {folder} is not a directory")
    classes = {}
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        files = sorted(p.relative_to(folder).as_posix() for p in sub.rglob("*")
                       if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise DataError(f"imagefolder: class folder {sub} holds no images")
        classes[sub.name] = files
    if not classes:
        raise DataError(f"imagefolder: {folder} has no class folders")
    return classes


def imagefolder_items(spec: dict, repo_root: Path, pick) -> dict:
    """An image folder's picked files, not decoded: class_names, found_at, and per split its folder and
    [(path relative to it, label)]; labels number the class folders in sorted order."""
    dirs = imagefolder_dirs(spec, repo_root)
    for split, key in (("train", "train_dir"), ("test", "test_dir")):
        if split not in dirs:
            raise DataError(f"imagefolder: set `path` or `{key}`")
    listings = {split: _class_folders(folder) for split, folder in dirs.items()}
    if set(listings["train"]) != set(listings["test"]):
        only_train = sorted(set(listings["train"]) - set(listings["test"]))
        only_test = sorted(set(listings["test"]) - set(listings["train"]))
        raise DataError(f"imagefolder: {dirs['train']} and {dirs['test']} hold different classes "
                        f"(only in train: {only_train}; only in test: {only_test})")
    class_names = list(listings["train"])
    out = {"class_names": class_names, "found_at": f"{dirs['train']} | {dirs['test']}", "folders": dirs}
    for split, folder in dirs.items():
        items = [(rel, label) for label, name in enumerate(class_names) for rel in listings[split][name]]
        out[split] = _picked(items, pick, split)
    return out


def read_imagefolder(spec: dict, repo_root: Path, pick) -> dict:
    listed = imagefolder_items(spec, repo_root, pick)
    inputs: dict[str, str] = {}
    out = {"class_names": listed["class_names"], "found_at": listed["found_at"], "inputs": inputs}
    for split, folder in listed["folders"].items():
        read = _folder_reader(folder, inputs, repo_root)
        out[f"x_{split}"], out[f"y_{split}"] = _decode_all(
            listed[split], read, lambda rel, f=folder: str(f / rel), ImageDecode.of(spec))
    return out


def index_imagefolder(spec: dict, repo_root: Path, pick) -> dict:
    """An image folder for streaming: per split the files (relative to the split's folder), labels, sizes
    and sha256, and the folders; nothing is decoded. Every file is read once, for its checksum."""
    listed = imagefolder_items(spec, repo_root, pick)
    out = {"class_names": listed["class_names"], "found_at": listed["found_at"], "inputs": {},
           "folders": {split: str(folder) for split, folder in listed["folders"].items()}}
    for split, folder in listed["folders"].items():
        rels = [rel for rel, _ in listed[split]]
        out[f"files_{split}"] = np.array(rels, dtype=np.str_)
        out[f"y_{split}"] = np.array([label for _, label in listed[split]], np.int64)
        out[f"bytes_{split}"] = np.array([(folder / rel).stat().st_size for rel in rels], np.int64)
        out[f"sha256_{split}"] = np.array([sha256_file(folder / rel) for rel in rels], dtype="<U64")
    return out


def decode_file(path: Path, decode: ImageDecode) -> np.ndarray:
    """One image file as the in-memory path decodes it, for streaming."""
    try:
        payload = Path(path).read_bytes()
    except OSError as err:
        raise DataError(f"{path}: unreadable ({err.strerror})") from None
    return decode(payload, str(path))
