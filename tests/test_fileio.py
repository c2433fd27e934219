"""File writes are atomic, and the module loads without torch (the DAG build imports it)."""
import subprocess
import sys

import pytest

from pipeline_src.fileio import write_atomic
from pipeline_src.provenance import REPO_ROOT


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


def test_the_fileio_module_loads_without_torch():
    code = "import sys, pipeline_src.fileio; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO_ROOT, timeout=120)
    assert out.stdout.strip() == "False", out.stderr
