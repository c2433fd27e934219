"""A whole run by hand, train then evaluate in one process (`train --out DIR`, the tests, benchmarks).
The DAG runs the two as separate jobs; `train` alone never imports this module, so its code hash
(spec/code_hash.py) stays free of evaluation code."""
from __future__ import annotations

from pathlib import Path

from pipeline_src.evaluation.evaluate import evaluate_run
from pipeline_src.spec.config import RunConfig
from pipeline_src.training.train import train_run


def train_and_evaluate(cfg: RunConfig, data, out_dir: Path, base_checkpoint: Path | None = None,
                       threads: int | None = None, on_epoch=None) -> dict:
    """Train cfg into out_dir, then evaluate it; returns metrics.json's record ({} on a torchrun
    process other than the first)."""
    out_dir = Path(out_dir)
    if not train_run(cfg, data, out_dir, base_checkpoint, threads=threads, on_epoch=on_epoch):
        return {}
    return evaluate_run(cfg, data, out_dir / "model.pt", out_dir / "metrics.json", threads=threads)
