"""DVC versions the raw files (data.dvc at the top: data/raw/ as one folder), Snakemake owns the DAG; each dataset's
version is derived from its part of data/raw/'s manifest. In a copy of the repository: `make data` leaves the
committed data.dvc clean; a changed raw file shows in `dvc status` and reruns that dataset's prepare_data and what
follows from it, nothing else; its recorded version alone reruns it too (a checkout need not leave newer file
times); adding a second dataset to data/raw/ reruns nothing of the first."""
import gzip
import json
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import yaml

from pipeline_src.spec.config import REPO_ROOT
from pipeline_src.data.dvc_versions import dataset_dvc_hash, dir_md5, read_dvc_file
from pipeline_src.data.fashion_mnist import FASHION_MNIST_FILES
from pipeline_src.data.files import DEBIAN_FASHION_MNIST

from helpers import repo_copy, run

BIN = Path(os.sys.executable).parent
UP_TO_DATE = "Data and pipelines are up to date."
FMNIST_DVC = "data.dvc"
# Fashion-MNIST's version: what DVC recorded for data/raw/fashion-mnist/ when it had a DVC file of its own
# (data-versions/fashion-mnist.dvc until data.dvc replaced it); derived from data.dvc's manifest it is the same,
# so nothing prepared or trained on it reruns.
FMNIST_VERSION = "ec0372c160db9ccb628b0f57ca841966.dir"

# Fashion-MNIST (a tiny stand-in, subsampled) next to a generated dataset that no raw file can change.
TINY = {
    "scale": "embedded_default",
    "device": "cpu",
    "seeds": [0],
    "training": {"epochs": 1, "batch_size": 16, "eval_batch_size": 32},
    "datasets": {"fmnist": {"source": "fashion-mnist", "subsample_per_class": {"train": 3, "test": 2}},
                 "digits": {"source": "digits"}},
    "models": {"sr": {"arch": "sr"}},
    "experiment_sets": {
        "baseline": {"datasets": ["fmnist", "digits"], "models": ["sr"],
                     "methods": [{"label": "baseline", "name": "baseline"}]},
    },
}


def write_idx_gz(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(gzip.compress(header + array.astype(np.uint8).tobytes(), mtime=0))


def write_tiny_fashion_mnist(folder: Path) -> None:
    """Valid IDX files: 10 classes, 4 training and 3 test images of 28 x 28 each."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    for split, per_class in (("train", 4), ("t10k", 3)):
        labels = np.repeat(np.arange(10), per_class)
        write_idx_gz(folder / f"{split}-images-idx3-ubyte.gz", rng.integers(0, 256, (len(labels), 28, 28)))
        write_idx_gz(folder / f"{split}-labels-idx1-ubyte.gz", labels)


def dry_run(repo: Path, params: Path, *args: str) -> dict[tuple[str, str], str]:
    """(rule, wildcards) -> reason, of every job a dry run would run."""
    out = run(str(BIN / "snakemake"), "-n", "--cores", "1", "--configfile", str(params), *args, cwd=repo)
    blocks = re.split(r"^(?:local)?rule (\w+):$", out, flags=re.M)[1:]
    jobs = {}
    for rule, block in zip(blocks[::2], blocks[1::2]):
        fields = dict(re.findall(r"^\s+(wildcards|reason): (.*)$", block, flags=re.M))
        jobs[(rule, fields.get("wildcards", ""))] = fields.get("reason", "")
    return jobs


@pytest.mark.skipif(not DEBIAN_FASHION_MNIST.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_make_data_on_a_fresh_clone_matches_the_committed_data_dvc(tmp_path):
    repo = repo_copy(tmp_path)
    committed = (repo / FMNIST_DVC).read_bytes()
    assert "not in cache" in run("dvc", "status", cwd=repo)

    # -o: the venv this test runs in stands in for the one `setup` would build
    run("make", "-o", ".venv/.installed", "data", cwd=repo)
    assert run("dvc", "status", cwd=repo).strip() == UP_TO_DATE
    assert (repo / FMNIST_DVC).read_bytes() == committed
    assert read_dvc_file(repo / FMNIST_DVC)[0] == (repo / "data/raw").resolve()
    assert not list(repo.glob("data-versions/*.dvc"))
    assert dataset_dvc_hash({"source": "fashion-mnist"}, repo) == FMNIST_VERSION
    for name in FASHION_MNIST_FILES:
        assert (repo / "data/raw/fashion-mnist" / f"{name}.gz").read_bytes() == \
            (DEBIAN_FASHION_MNIST / f"{name}.gz").read_bytes()


@pytest.mark.slow
def test_a_changed_raw_file_reruns_prepare_and_its_runs_only(tmp_path):
    repo = repo_copy(tmp_path)
    raw = repo / "data/raw/fashion-mnist"
    write_tiny_fashion_mnist(raw)
    run("dvc", "add", "-q", "data/raw", cwd=repo)  # updates data.dvc
    assert run("dvc", "status", cwd=repo).strip() == UP_TO_DATE
    params = tmp_path / "tiny.yaml"
    params.write_text(yaml.safe_dump({**TINY, "results_dir": str(tmp_path / "results")}, sort_keys=False))
    run(str(BIN / "snakemake"), "--cores", "2", "--configfile", str(params), cwd=repo)
    manifest = json.loads((tmp_path / "results/prepared/fmnist/manifest.json").read_text())
    assert manifest["found_at"] == str(raw)
    assert dry_run(repo, params) == {}
    # what depends on fmnist's preparation: its training run and the set's tracking, table and audit
    downstream = sorted(dry_run(repo, params, "--forcerun", str(tmp_path / "results/prepared/fmnist/data.npz")))
    assert ("train", "experiment_set=baseline, run_id=fmnist-sr-baseline-s0") in downstream
    assert not [job for job in downstream if "digits" in job[1]]

    # One raw file changes: DVC sees it, Snakemake reruns fmnist's preparation and what depends on it.
    labels = raw / "t10k-labels-idx1-ubyte.gz"
    stamp = labels.stat()
    write_idx_gz(labels, np.roll(np.repeat(np.arange(10), 3), 1))
    status = run("dvc", "status", cwd=repo)
    assert FMNIST_DVC in status and "data/raw" in status.split("modified:")[1]
    assert sorted(dry_run(repo, params)) == downstream

    # `dvc add` records the new version; with the file's old time back, the DVC file's hash alone reruns it.
    before = dataset_dvc_hash(TINY["datasets"]["fmnist"], repo)
    run("dvc", "add", "-q", "data/raw", cwd=repo)
    assert dataset_dvc_hash(TINY["datasets"]["fmnist"], repo) != before
    assert run("dvc", "status", cwd=repo).strip() == UP_TO_DATE
    os.utime(labels, ns=(stamp.st_atime_ns, stamp.st_mtime_ns))
    jobs = dry_run(repo, params)
    assert sorted(jobs) == downstream
    assert jobs[("prepare_data", "dataset=fmnist")].startswith("Params have changed")


@pytest.mark.slow
def test_adding_a_dataset_reruns_nothing_of_another(tmp_path):
    """CIFAR-10 joins data/raw/ and a set next to Fashion-MNIST: data.dvc changes, Fashion-MNIST's version
    (derived from its part of the manifest) does not, and the dry run schedules CIFAR-10's preparation and
    training and the set's tables, and no job of Fashion-MNIST (data.dvc's own md5 as every dataset's version
    would rerun Fashion-MNIST's whole chain)."""
    from fixtures_data import cifar_files, write_cifar_tarball

    repo = repo_copy(tmp_path)
    write_tiny_fashion_mnist(repo / "data/raw/fashion-mnist")
    run("dvc", "add", "-q", "data/raw", cwd=repo)
    params = tmp_path / "tiny.yaml"
    before = {**TINY, "results_dir": str(tmp_path / "results")}
    params.write_text(yaml.safe_dump(before, sort_keys=False))
    run(str(BIN / "snakemake"), "--cores", "2", "--configfile", str(params), cwd=repo)
    fmnist_version, data_dvc = dataset_dvc_hash(TINY["datasets"]["fmnist"], repo), read_dvc_file(repo / FMNIST_DVC)

    (repo / "data/raw/cifar10").mkdir(parents=True)
    files, _ = cifar_files("cifar10", np.random.default_rng(0), per_batch=4)
    write_cifar_tarball(repo / "data/raw/cifar10/cifar-10-python.tar.gz", "cifar10", files)
    assert dataset_dvc_hash({"source": "cifar10"}, repo) == ""  # not recorded yet
    run("dvc", "add", "-q", "data/raw", cwd=repo)  # as docs/data.md says
    assert run("dvc", "status", cwd=repo).strip() == UP_TO_DATE
    assert read_dvc_file(repo / FMNIST_DVC) != data_dvc
    assert dataset_dvc_hash(TINY["datasets"]["fmnist"], repo) == fmnist_version
    assert dataset_dvc_hash({"source": "cifar10"}, repo).endswith(".dir")
    after = yaml.safe_load(yaml.safe_dump(before))
    after["datasets"]["cifar"] = {"source": "cifar10"}
    after["experiment_sets"]["baseline"]["datasets"].append("cifar")
    params.write_text(yaml.safe_dump(after, sort_keys=False))

    jobs = dry_run(repo, params)
    assert ("prepare_data", "dataset=cifar") in jobs
    assert ("train", "experiment_set=baseline, run_id=cifar-sr-baseline-s0") in jobs
    assert [job for job in jobs if "fmnist" in job[1] or "digits" in job[1]] == []


def write_data_dvc(repo: Path, entries: list[dict], cache: bool = True) -> str:
    """data.dvc tracking data/raw/ with this manifest (and the manifest in the DVC cache, as `dvc add` leaves
    it); returns data.dvc's md5."""
    md5 = dir_md5(entries)
    (repo / "data.dvc").write_text(yaml.safe_dump({"outs": [{"path": "data/raw", "md5": md5, "hash": "md5"}]}))
    if cache:
        manifest = repo / ".dvc/cache/files/md5" / md5[:2] / md5[2:]
        manifest.parent.mkdir(parents=True, exist_ok=True)
        manifest.write_text(json.dumps(sorted(entries, key=lambda e: e["relpath"]), sort_keys=True))
    return md5


def test_each_datasets_version_comes_from_its_part_of_the_manifest(tmp_path):
    """No dvc run: a repository with data.dvc and its manifest in the cache, as `dvc add data/raw` leaves them."""
    repo = tmp_path / "repo"
    for name, files in (("fashion-mnist", ["a.gz", "b.gz"]), ("cifar10", ["c.tar.gz"])):
        (repo / "data/raw" / name).mkdir(parents=True)
        for file in files:
            (repo / "data/raw" / name / file).write_text(name + file)
    fmnist = [{"md5": "1" * 32, "relpath": "a.gz"}, {"md5": "2" * 32, "relpath": "b.gz"}]
    only_fmnist = write_data_dvc(repo, [{**e, "relpath": f"fashion-mnist/{e['relpath']}"} for e in fmnist])
    version = dataset_dvc_hash({"source": "fashion-mnist"}, repo)
    assert version == dir_md5(fmnist) != only_fmnist  # the md5 DVC gives the folder tracked alone
    assert dataset_dvc_hash({"source": "cifar10"}, repo) == ""  # in data/raw/, not in data.dvc yet

    cifar = {"md5": "3" * 32, "relpath": "cifar10/c.tar.gz"}
    both = write_data_dvc(repo, [cifar] + [{**e, "relpath": f"fashion-mnist/{e['relpath']}"} for e in fmnist])
    assert both != only_fmnist and dataset_dvc_hash({"source": "fashion-mnist"}, repo) == version
    assert dataset_dvc_hash({"source": "cifar10"}, repo) == dir_md5([{**cifar, "relpath": "c.tar.gz"}])
    # a dataset whose path is one file of data/raw/: that file's md5
    assert dataset_dvc_hash({"source": "cifar10", "path": "data/raw/cifar10/c.tar.gz"}, repo) == "3" * 32

    # without the manifest in the cache (a fresh clone before `make data` or `dvc pull`): data.dvc's own md5
    fresh = tmp_path / "fresh"
    shutil.copytree(repo / "data", fresh / "data")
    assert write_data_dvc(fresh, [cifar], cache=False) == dataset_dvc_hash({"source": "fashion-mnist"}, fresh)
