"""Dataset preparation: each source read from small files written here in its real format."""
from __future__ import annotations

import gzip
import hashlib
import json
import os
import pickle
import re
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from fixtures_data import (FASHION_STEMS, cifar_files, decoded, idx_bytes, image_bytes, write_cifar_tarball,
                           write_fashion, write_imagefolder, write_tiny_imagenet_zip)
from pipeline_src.data import fashion_mnist, image_folders
from pipeline_src.data import files as raw_files
from pipeline_src.spec.config import REPO_ROOT, load_params
from pipeline_src.data.prepared import DataError, load_prepared, prepare

DEBIAN = Path("/usr/share/datasets/fashion-mnist")


def sha256(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture
def no_system_fashion(monkeypatch, tmp_path):
    """Hide the Debian files and make the download fail, so only the test's own files can be found."""
    monkeypatch.setattr(raw_files, "DEBIAN_FASHION_MNIST", tmp_path / "no-debian")

    def offline(dest, *args, **kwargs):
        raise urllib.error.URLError("offline in tests")

    monkeypatch.setattr(fashion_mnist, "download_fashion_mnist", offline)


# ---------------------------------------------------------------- prepared form

def test_manifest_records_checksums_and_npz_round_trips(tmp_path, rng, no_system_fashion):
    arrays = write_fashion(tmp_path / "raw", rng)
    out = tmp_path / "prepared"
    manifest = prepare("fm", {"source": "fashion-mnist", "path": str(tmp_path / "raw")}, out, tmp_path)

    assert manifest == json.loads((out / "manifest.json").read_text())
    assert manifest["data_version"] == sha256(out / "data.npz")
    assert manifest["inputs"] == {f"raw/{s}.gz": sha256(tmp_path / "raw" / f"{s}.gz") for s in FASHION_STEMS}
    assert (manifest["shape"], manifest["n_train"], manifest["n_test"]) == ([1, 28, 28], 30, 20)
    assert manifest["num_classes"] == 10 and manifest["class_names"][0] == "T-shirt/top"
    assert manifest["spec"] == {"source": "fashion-mnist", "path": str(tmp_path / "raw"), "seed": 0}
    assert sorted(os.listdir(out)) == ["data.npz", "manifest.json"]  # no temp files left behind

    with np.load(out / "data.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["x_test", "x_train", "y_test", "y_train"]
        np.testing.assert_array_equal(npz["x_train"][:, 0], arrays["x_train"])

    data = load_prepared(out)
    assert data.x_train.dtype == torch.uint8 and data.y_train.dtype == torch.int64
    assert data.mask_test is None and data.class_names == manifest["class_names"]
    np.testing.assert_array_equal(data.x_test[:, 0].numpy(), arrays["x_test"])
    np.testing.assert_array_equal(data.y_test.numpy(), arrays["y_test"])


def test_data_version_depends_only_on_content(tmp_path):
    spec = {"source": "synthetic-clutter", "n_train": 8, "n_test": 4, "image_size": 16}
    first = prepare("s", spec, tmp_path / "a", tmp_path)
    second = prepare("s", spec, tmp_path / "b", tmp_path)
    assert first["data_version"] == second["data_version"]
    assert (tmp_path / "a" / "data.npz").read_bytes() == (tmp_path / "b" / "data.npz").read_bytes()


def test_changed_npz_is_refused(tmp_path):
    prepare("s", {"source": "synthetic-clutter", "n_train": 8, "n_test": 4, "image_size": 16}, tmp_path, tmp_path)
    with open(tmp_path / "data.npz", "r+b") as f:
        f.seek(-20, os.SEEK_END)
        f.write(b"\xff" * 4)
    with pytest.raises(DataError, match=r"data\.npz: sha256 .* does not match the manifest"):
        load_prepared(tmp_path)


def test_missing_prepared_files_are_reported(tmp_path):
    with pytest.raises(DataError, match="manifest.json does not exist"):
        load_prepared(tmp_path)


@pytest.mark.parametrize("spec, message", [
    ({"source": "mnist"}, "datasets.bad: source: 'mnist' is not allowed; allowed values: digits, fashion-mnist"),
    ({"source": "digits", "n_train": 5}, "datasets.bad: dataset: key 'n_train' does not apply here; allowed keys: "
                                         "source, paper_name, seed, subsample_per_class, test_fraction"),
    ({"source": "digits", "subsample_per_class": {"val": 3}},
     "datasets.bad: subsample_per_class: unknown key 'val'; allowed keys: test, train"),
    ({"source": "synthetic-clutter", "num_classes": 9}, "num_classes: 9 is greater than the maximum of 8 (one shape"),
])
def test_bad_specs_are_rejected(tmp_path, spec, message):
    with pytest.raises(DataError, match=re.escape(message)):
        prepare("bad", spec, tmp_path, tmp_path)


# ---------------------------------------------------------------- digits and subsampling

def test_digits_scaled_and_split_stratified(tmp_path):
    manifest = prepare("d", {"source": "digits"}, tmp_path, tmp_path)
    data = load_prepared(tmp_path)
    assert data.x_train.shape[1:] == (1, 8, 8) and manifest["n_train"] + manifest["n_test"] == 1797
    assert manifest["n_test"] == 450  # 25 % by default
    bunch = load_digits()
    expected = np.rint(bunch.images * 255 / 16).astype(np.uint8)
    # The split is a permutation of the whole set: compare as multisets of (pixels, label).
    got = sorted(bytes(x[0].numpy()) + bytes([y]) for x, y in zip(torch.cat([data.x_train, data.x_test]),
                                                                    torch.cat([data.y_train, data.y_test]).tolist()))
    assert got == sorted(bytes(x) + bytes([y]) for x, y in zip(expected, bunch.target.tolist()))
    fractions = np.array(manifest["class_counts"]["test"]) / np.bincount(bunch.target)
    assert np.all(abs(fractions - 0.25) < 0.03)
    assert manifest["inputs"] and all(len(v) == 64 for v in manifest["inputs"].values())


def test_subsample_per_class_counts_and_determinism(tmp_path):
    spec = {"source": "digits", "subsample_per_class": {"train": 7, "test": 3}, "seed": 4}
    first = prepare("d", spec, tmp_path / "a", tmp_path)
    assert first["class_counts"] == {"train": [7] * 10, "test": [3] * 10}
    assert prepare("d", spec, tmp_path / "b", tmp_path)["data_version"] == first["data_version"]
    assert prepare("d", {**spec, "seed": 5}, tmp_path / "c", tmp_path)["data_version"] != first["data_version"]
    # Changing only the test subsample leaves the training subsample as it was.
    prepare("d", {**spec, "subsample_per_class": {"train": 7, "test": 2}}, tmp_path / "e", tmp_path)
    assert torch.equal(load_prepared(tmp_path / "a").x_train, load_prepared(tmp_path / "e").x_train)


# ---------------------------------------------------------------- synthetic clutter

def test_synthetic_clutter_is_deterministic_with_masks(tmp_path):
    spec = {"source": "synthetic-clutter", "n_train": 40, "n_test": 20, "num_classes": 5, "image_size": 24, "seed": 3}
    manifest = prepare("s", spec, tmp_path / "a", tmp_path)
    data = load_prepared(tmp_path / "a")
    assert data.x_train.shape == (40, 3, 24, 24) and data.mask_test.shape == (20, 24, 24)
    assert data.mask_train.dtype == torch.bool and manifest["has_mask"]
    assert manifest["class_counts"] == {"train": [8] * 5, "test": [4] * 5}
    assert manifest["class_names"] == ["disc", "square", "triangle", "cross", "ring"]
    area = data.mask_train.flatten(1).float().mean(1)
    assert torch.all(area > 0.01) and torch.all(area < 0.5)  # an object, not the whole image
    other = prepare("s", {**spec, "seed": 4}, tmp_path / "b", tmp_path)
    assert other["data_version"] != manifest["data_version"]
    again = prepare("s", {**spec, "n_train": 10}, tmp_path / "c", tmp_path)
    assert torch.equal(load_prepared(tmp_path / "c").x_test, data.x_test)  # test set independent of n_train
    assert again["n_train"] == 10


# ---------------------------------------------------------------- Fashion-MNIST (IDX)

def test_fashion_uncompressed_idx_files_are_accepted(tmp_path, rng, no_system_fashion):
    arrays = write_fashion(tmp_path / "raw", rng, gz=False)
    prepare("fm", {"source": "fashion-mnist", "path": "raw"}, tmp_path / "out", tmp_path)
    np.testing.assert_array_equal(load_prepared(tmp_path / "out").x_train[:, 0].numpy(), arrays["x_train"])


def _corrupt(kind: str, path: Path) -> None:
    raw = gzip.decompress(path.read_bytes())
    if kind == "truncated":
        path.write_bytes(gzip.compress(raw[:-100]))
    elif kind == "bad gzip":
        compressed = path.read_bytes()
        path.write_bytes(compressed[: len(compressed) // 2])
    elif kind == "wrong magic":
        path.write_bytes(gzip.compress(b"\x12\x34" + raw[2:]))


@pytest.mark.parametrize("kind, message", [("truncated", "size mismatch"), ("bad gzip", "corrupt or truncated gzip"),
                                           ("wrong magic", "bad magic number")])
def test_corrupt_idx_names_the_file(tmp_path, rng, no_system_fashion, kind, message):
    write_fashion(tmp_path / "raw", rng)
    bad = tmp_path / "raw" / "t10k-images-idx3-ubyte.gz"
    _corrupt(kind, bad)
    with pytest.raises(DataError, match=message) as err:
        prepare("fm", {"source": "fashion-mnist", "path": str(tmp_path / "raw")}, tmp_path / "out", tmp_path)
    assert str(bad) in str(err.value)


def test_fashion_search_order(tmp_path, monkeypatch, no_system_fashion):
    given = write_fashion(tmp_path / "given", np.random.default_rng(1))
    local = write_fashion(tmp_path / "data" / "raw" / "fashion-mnist", np.random.default_rng(2))
    system = write_fashion(tmp_path / "system", np.random.default_rng(3))
    monkeypatch.setattr(raw_files, "DEBIAN_FASHION_MNIST", tmp_path / "system")

    def first_train_image(spec, out):
        manifest = prepare("fm", spec, tmp_path / out, tmp_path)
        return manifest["found_at"], load_prepared(tmp_path / out).x_train[0, 0].numpy()

    found, image = first_train_image({"source": "fashion-mnist", "path": "given"}, "o1")
    assert found == str(tmp_path / "given") and np.array_equal(image, given["x_train"][0])
    found, image = first_train_image({"source": "fashion-mnist"}, "o2")
    assert found == str(tmp_path / "data/raw/fashion-mnist") and np.array_equal(image, local["x_train"][0])
    (tmp_path / "empty").mkdir()
    found, _ = first_train_image({"source": "fashion-mnist", "path": "empty"}, "o3")
    assert found == str(tmp_path / "data/raw/fashion-mnist")
    for stem in FASHION_STEMS:
        (tmp_path / "data/raw/fashion-mnist" / f"{stem}.gz").unlink()
    found, image = first_train_image({"source": "fashion-mnist"}, "o4")
    assert found == str(tmp_path / "system") and np.array_equal(image, system["x_train"][0])


def test_fashion_missing_everywhere_is_one_clear_error(tmp_path, no_system_fashion):
    with pytest.raises(DataError) as err:
        prepare("fm", {"source": "fashion-mnist", "path": "nowhere"}, tmp_path / "out", tmp_path)
    message = str(err.value)
    assert "\n" not in message and "apt-get install dataset-fashion-mnist" in message
    for place in (tmp_path / "nowhere", tmp_path / "data/raw/fashion-mnist", tmp_path / "no-debian"):
        assert str(place) in message


def test_download_checks_published_md5(tmp_path, rng):
    write_fashion(tmp_path / "mirror", rng)
    with pytest.raises(DataError, match="published md5"):
        fashion_mnist.download_fashion_mnist(tmp_path / "dest", base_url=(tmp_path / "mirror").as_uri() + "/")
    assert not (tmp_path / "dest" / "train-images-idx3-ubyte.gz").exists()


def test_idx_dtypes_and_dims_are_parsed():
    values = np.arange(24, dtype=np.int32).reshape(2, 3, 4) - 5
    np.testing.assert_array_equal(fashion_mnist.parse_idx(idx_bytes(values), "x"), values)


@pytest.mark.skipif(not (DEBIAN / "train-images-idx3-ubyte.gz").is_file(),
                    reason="Debian package dataset-fashion-mnist is not installed")
def test_real_fashion_mnist_from_debian(tmp_path, monkeypatch):
    monkeypatch.setattr(fashion_mnist, "download_fashion_mnist", None)  # must not be needed
    manifest = prepare("fm", {"source": "fashion-mnist"}, tmp_path, tmp_path)
    data = load_prepared(tmp_path)
    assert (manifest["n_train"], manifest["n_test"]) == (60000, 10000) and manifest["found_at"] == str(DEBIAN)
    assert data.x_train.shape == (60000, 1, 28, 28) and data.x_test.shape == (10000, 1, 28, 28)
    assert int(data.y_train.min()) == 0 and int(data.y_train.max()) == 9 and int(data.y_test.max()) == 9
    assert manifest["class_counts"] == {"train": [6000] * 10, "test": [1000] * 10}


# ---------------------------------------------------------------- CIFAR

@pytest.mark.parametrize("source", ["cifar10", "cifar100"])
def test_cifar_tarball_round_trip(tmp_path, rng, source):
    files, expected = cifar_files(source, rng)
    name = "cifar-10-python.tar.gz" if source == "cifar10" else "cifar-100-python.tar.gz"
    archive = tmp_path / "data" / "raw" / source / name
    archive.parent.mkdir(parents=True)
    write_cifar_tarball(archive, source, files)
    manifest = prepare(source, {"source": source}, tmp_path / "out", tmp_path)
    data = load_prepared(tmp_path / "out")
    for split in ("train", "test"):
        np.testing.assert_array_equal(getattr(data, f"x_{split}").numpy(), expected[f"x_{split}"])
        np.testing.assert_array_equal(getattr(data, f"y_{split}").numpy(), expected[f"y_{split}"])
    # Channel-first: the first 1024 bytes of a row are the red plane.
    assert np.array_equal(data.x_train[0, 0].numpy().ravel(), expected["x_train"][0].ravel()[:1024])
    assert manifest["class_names"] == expected["class_names"] and manifest["shape"] == [3, 32, 32]
    assert manifest["inputs"] == {archive.relative_to(tmp_path).as_posix(): sha256(archive)}


def test_cifar_extracted_folder_and_subsample(tmp_path, rng):
    files, expected = cifar_files("cifar10", rng, per_batch=20)
    folder = tmp_path / "somewhere" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    spec = {"source": "cifar10", "path": "somewhere", "subsample_per_class": {"train": 2}}
    manifest = prepare("c", spec, tmp_path / "out", tmp_path)
    assert max(manifest["class_counts"]["train"]) == 2 and manifest["n_test"] == 20
    assert len(manifest["inputs"]) == 7
    data = load_prepared(tmp_path / "out")
    rows = {bytes(x) for x in expected["x_train"]}
    assert all(bytes(x.numpy()) in rows for x in data.x_train)


def test_cifar_pickle_with_foreign_global_is_refused(tmp_path, rng):
    files, _ = cifar_files("cifar10", rng)
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return os.mkdir, (str(marker),)

    files["batches.meta"] = pickle.dumps({b"label_names": Payload()}, protocol=2)
    folder = tmp_path / "data/raw/cifar10/cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name, payload in files.items():
        (folder / name).write_bytes(payload)
    with pytest.raises(DataError, match=r"batches\.meta: cannot unpickle .*mkdir is not allowed"):
        prepare("c", {"source": "cifar10"}, tmp_path / "out", tmp_path)
    assert not marker.exists()


def test_cifar_missing_is_reported(tmp_path):
    with pytest.raises(DataError, match="cifar-100-python.tar.gz"):
        prepare("c", {"source": "cifar100"}, tmp_path / "out", tmp_path)


# ---------------------------------------------------------------- Tiny ImageNet

def test_tiny_imagenet_zip_round_trip(tmp_path, rng):
    archive = tmp_path / "data/raw/tiny-imagenet/tiny-imagenet-200.zip"
    archive.parent.mkdir(parents=True)
    members = write_tiny_imagenet_zip(archive, rng)
    manifest = prepare("t", {"source": "tiny-imagenet"}, tmp_path / "out", tmp_path)
    data = load_prepared(tmp_path / "out")
    index = {"n01": 0, "n02": 1, "n03": 2}  # sorted wnids, whatever order wnids.txt lists them in
    assert manifest["class_names"] == ["thing n01, other name", "thing n02, other name", "thing n03, other name"]
    train = sorted(members["train"].items())
    assert data.x_train.shape == (9, 3, 64, 64) and manifest["n_test"] == 6
    for i, (_, (payload, wnid)) in enumerate(train):
        np.testing.assert_array_equal(data.x_train[i].numpy(), decoded(payload))
        assert data.y_train[i] == index[wnid]
    for i, (_, (payload, wnid)) in enumerate(sorted(members["val"].items())):
        np.testing.assert_array_equal(data.x_test[i].numpy(), decoded(payload))
        assert data.y_test[i] == index[wnid]
    assert manifest["inputs"] == {"data/raw/tiny-imagenet/tiny-imagenet-200.zip": sha256(archive)}


def test_tiny_imagenet_folder_resized_and_subsampled(tmp_path, rng):
    archive = tmp_path / "tiny.zip"
    write_tiny_imagenet_zip(archive, rng, n_train=4)
    zipfile.ZipFile(archive).extractall(tmp_path / "extracted")  # our own fixture: nothing to guard against
    spec = {"source": "tiny-imagenet", "path": "extracted", "image_size": 32, "subsample_per_class": {"train": 2}}
    manifest = prepare("t", spec, tmp_path / "out", tmp_path)
    assert manifest["shape"] == [3, 32, 32] and manifest["class_counts"]["train"] == [2, 2, 2]
    # Only the files actually read are hashed: 3 text files, 6 train and 6 val images.
    assert len(manifest["inputs"]) == 3 + 6 + 6


def test_corrupt_jpeg_in_zip_names_the_member(tmp_path, rng):
    archive = tmp_path / "tiny.zip"
    members = write_tiny_imagenet_zip(archive, rng, wnids=("n01",), n_train=1, n_val=1)
    rebuilt = tmp_path / "bad.zip"
    with zipfile.ZipFile(archive) as src, zipfile.ZipFile(rebuilt, "w") as dst:
        for info in src.infolist():
            payload = src.read(info)
            dst.writestr(info, payload[:200] if info.filename.endswith("val_0.JPEG") else payload)
    assert "val/images/val_0.JPEG" in members["val"]
    with pytest.raises(DataError, match=r"bad\.zip:tiny-imagenet-200/val/images/val_0\.JPEG: cannot decode"):
        prepare("t", {"source": "tiny-imagenet", "path": str(rebuilt)}, tmp_path / "out", tmp_path)


# ---------------------------------------------------------------- image folders

def test_imagefolder_round_trip(tmp_path, rng):
    train = write_imagefolder(tmp_path / "office/train", rng, {"mug": 3, "bike": 2})
    val = write_imagefolder(tmp_path / "office/val", rng, {"mug": 1, "bike": 2})
    manifest = prepare("o", {"source": "imagefolder", "path": "office", "image_size": 16}, tmp_path / "out", tmp_path)
    data = load_prepared(tmp_path / "out")
    assert manifest["class_names"] == ["bike", "mug"] and manifest["shape"] == [3, 16, 16]
    for x, y, files in ((data.x_train, data.y_train, train), (data.x_test, data.y_test, val)):
        ordered = sorted(files, key=lambda p: (p.parent.name, p.name))
        for i, path in enumerate(ordered):
            np.testing.assert_array_equal(x[i].numpy(), files[path])
            assert data.class_names[y[i]] == path.parent.name
    assert manifest["inputs"]["office/train/mug/000.png"] == sha256(tmp_path / "office/train/mug/000.png")
    assert len(manifest["inputs"]) == 8


def test_imagefolder_resizes_and_converts_to_rgb(tmp_path, rng):
    (tmp_path / "a/c0").mkdir(parents=True)
    (tmp_path / "b/c0").mkdir(parents=True)
    (tmp_path / "a/c0/wide.png").write_bytes(image_bytes(rng.integers(0, 256, (20, 50, 3), dtype=np.uint8), "PNG"))
    gray = rng.integers(0, 256, (30, 30), dtype=np.uint8)
    (tmp_path / "b/c0/gray.png").write_bytes(image_bytes(gray, "PNG"))
    spec = {"source": "imagefolder", "train_dir": "a", "test_dir": "b", "image_size": 10}
    prepare("o", spec, tmp_path / "out", tmp_path)
    data = load_prepared(tmp_path / "out")
    assert data.x_train.shape == (1, 3, 10, 10) and data.x_test.shape == (1, 3, 10, 10)
    assert torch.equal(data.x_test[0, 0], data.x_test[0, 2])


def _banded(width: int, height: int) -> bytes:
    """Red left quarter, green middle, blue right quarter: what survives a crop shows where it cut."""
    image = np.zeros((height, width, 3), np.uint8)
    image[:, : width // 4, 0] = 255
    image[:, width // 4: width - width // 4, 1] = 255
    image[:, width - width // 4:, 2] = 255
    return image_bytes(image, "PNG")


@pytest.mark.parametrize("width, crop_pct, crop_mode, red_cols, green_cols", [
    (80, 1.0, "center", 0, 16),  # 80x40 -> 32x16, columns 8..23 kept: the green middle only
    (80, 1.0, "squash", 4, 8),   # -> 16x16: every band survives in proportion
    (40, 1.0, "center", 4, 8),   # square: nothing cropped
    (40, 0.5, "center", 0, 16),  # -> 32x32, columns 8..23 kept
])
def test_image_decode_is_timms_eval_transform(width, crop_pct, crop_mode, red_cols, green_cols):
    decode = image_folders.ImageDecode(size=16, crop_pct=crop_pct, crop_mode=crop_mode, interpolation="bicubic")
    pixels = decode(_banded(width, 40), "banded.png")
    assert pixels.shape == (3, 16, 16) and pixels.dtype == np.uint8
    middle_row = pixels[:, 8, :]
    assert (middle_row[0] > 200).sum() == red_cols and (middle_row[1] > 200).sum() == green_cols


def test_paper_pretrained_models_see_their_weights_data_config():
    """Each pretrained timm model of paper.yaml trains and tests on pixels resized and cropped as its
    weights' timm data config says (the normalisation follows the same config: input_norm auto)."""
    import timm

    from pipeline_src.spec.datasets import resolve_spec

    params = load_params(REPO_ROOT / "params/paper.yaml")
    checked = set()
    for spec in params["experiment_sets"].values():
        for model in spec["models"]:
            cfg = params["models"][model]
            if not (cfg.get("timm_kwargs") or {}).get("pretrained") and not cfg.get("weights_file"):
                continue
            weights = timm.models.get_pretrained_cfg(cfg["arch"])
            for dataset in spec["datasets"]:
                data = resolve_spec(dataset, params["datasets"][dataset])
                assert (data["image_size"], data["crop_pct"], data["crop_mode"], data["interpolation"]) == (
                    weights.input_size[-1], weights.crop_pct, weights.crop_mode, weights.interpolation), (model, dataset)
                checked.add((model, dataset))
    assert checked == {("vit_b16", "imagenet"), ("vit_b16_384", "imagenet_384")}


def test_imagefolder_needs_the_same_classes(tmp_path, rng):
    write_imagefolder(tmp_path / "d/train", rng, {"a": 1, "b": 1})
    write_imagefolder(tmp_path / "d/val", rng, {"a": 1, "c": 1})
    with pytest.raises(DataError, match=r"different classes \(only in train: \['b'\]; only in test: \['c'\]\)"):
        prepare("o", {"source": "imagefolder", "path": "d", "image_size": 16}, tmp_path / "out", tmp_path)


def test_corrupt_png_names_the_file(tmp_path, rng):
    write_imagefolder(tmp_path / "d/train", rng, {"a": 2})
    write_imagefolder(tmp_path / "d/val", rng, {"a": 1})
    bad = tmp_path / "d/train/a/001.png"
    bad.write_bytes(bad.read_bytes()[:60])
    with pytest.raises(DataError, match="cannot decode image") as err:
        prepare("o", {"source": "imagefolder", "path": "d", "image_size": 16}, tmp_path / "out", tmp_path)
    assert str(bad) in str(err.value)
