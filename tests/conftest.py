"""Tests write their results under pytest's tmp_path, outside the project: allowed here, and only here,
by the explicit switch (pipeline_src/spec/config.py, RESULTS_ANYWHERE_ENV), which the subprocesses
(snakemake, python -m pipeline_src) inherit. The tests of the refusal unset it."""
import os

os.environ.setdefault("PIPELINE_RESULTS_ANYWHERE", "1")
