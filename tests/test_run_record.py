"""The run record: one shape with a format version; older committed records upgrade on reading."""
import json

import pytest

from pipeline_src.spec.config import REPO_ROOT
from pipeline_src.spec.run_record import FORMAT, load_record, method_as_run, upgrade

REPORT_RUNS = REPO_ROOT / "reports" / "fashion-mnist" / "runs"


def test_a_format_1_record_keeps_one_method_spec_and_what_the_run_resolved_beyond_it():
    path = REPORT_RUNS / "test_batch_study_vit" / "fmnist-vit6-clean_train-s0" / "metrics.json"
    raw = json.loads(path.read_text())
    assert "format" not in raw and "resolved_method" in raw["params"]
    record = load_record(path)
    assert record["format"] == FORMAT and "resolved_method" not in record["params"]
    assert method_as_run(record) == raw["params"]["resolved_method"]  # nothing the run resolved is lost
    assert record["method_runtime"]["site_module"] == raw["params"]["resolved_method"]["site_module"]
    assert upgrade(record) is record  # the current format passes through


def test_every_committed_record_upgrades():
    records = [load_record(path) for path in REPORT_RUNS.glob("*/*/metrics.json")]
    assert len(records) >= 120 and {r["format"] for r in records} == {FORMAT}


def test_an_unknown_newer_format_is_one_line():
    with pytest.raises(ValueError, match=r"has format 9; this code reads formats 1 to 2: update the pipeline"):
        upgrade({"format": 9, "run_id": "x"})
