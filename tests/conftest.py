"""Tests write their results under pytest's tmp_path, outside the project: allowed here, and only here,
by the explicit switch (pipeline_src/spec/config.py, RESULTS_ANYWHERE_ENV), which the subprocesses
(snakemake, python -m pipeline_src) inherit. The tests of the refusal unset it.

Shared fixtures: `digits_dir` (digits prepared once per test module) and `make_run` (a run built
through the run table, tests/helpers.py)."""
import os

import pytest

os.environ.setdefault("PIPELINE_RESULTS_ANYWHERE", "1")

import helpers  # noqa: E402  (after the switch above: helpers imports the package's config)


@pytest.fixture(scope="module")
def digits_dir(tmp_path_factory):
    return helpers.prepare_digits(tmp_path_factory.mktemp("prepared") / "digits")


@pytest.fixture
def make_run():
    return helpers.make_run
