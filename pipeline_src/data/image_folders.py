"""Image files: Tiny ImageNet's archive or folder, and class-per-folder image folders, decoded with timm's evaluation transform."""
from __future__ import annotations

import contextlib
import hashlib
import io
import zipfile
import zlib
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline_src.data.files import DataError, imagefolder_dirs, input_label, search_places, sha256_file

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
