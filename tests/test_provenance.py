"""Provenance: code hashes follow the code, writes are atomic."""
import shutil

import pytest

from pipeline_src.provenance import PACKAGE_DIR, code_version, git_state, write_atomic


def test_code_version_follows_the_named_modules_only(tmp_path):
    package = tmp_path / "pkg"
    shutil.copytree(PACKAGE_DIR, package, ignore=shutil.ignore_patterns("__pycache__"))
    train_hash = code_version(["train", "noise"], package)
    aggregate_hash = code_version(["aggregate"], package)
    assert train_hash == code_version(["train", "noise"], PACKAGE_DIR)

    with open(package / "noise.py", "a") as handle:
        handle.write("\n# an edit\n")
    assert code_version(["train", "noise"], package) != train_hash, "editing noise.py must rerun training"
    assert code_version(["aggregate"], package) == aggregate_hash, "but not the aggregation"


def test_git_state_names_a_commit():
    state = git_state()
    assert len(state["git_commit"]) == 40 and state["git_dirty"] in (True, False)


def test_write_atomic_leaves_no_partial_file(tmp_path):
    target = tmp_path / "metrics.json"
    write_atomic(target, "old")

    class Boom(str):
        def encode(self, *args):
            raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        write_atomic(target, Boom("new"))
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["metrics.json"]
