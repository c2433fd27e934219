"""Fake run records, audits and a hung tracking server for the tracking tests (not a test module)."""
import json
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

EPOCHS = 6
EVALUATIONS = {"no_noise": 91.2, "gaussian_0.1": 88.5, "uniform_0.1": 87.25}
DIAGNOSTICS = {"grad_norm": 1.5, "noise_ratio": 0.125}


def make_metrics(experiment_set="baseline", seed=0, params_hash="ab12", epochs=EPOCHS) -> dict:
    run_id = f"digits-dnn3-{experiment_set}-s{seed}"
    return {
        "run_id": run_id, "experiment_set": experiment_set, "set_kind": experiment_set, "dataset": "digits",
        "model": "dnn3", "method": experiment_set, "method_name": experiment_set, "seed": seed,
        "scale": "embedded_default",
        "params": {"training": {"epochs": epochs, "optimizer": {"name": "adam", "lr": 0.001}},
                   "method": {"layers": [1, 2], "strength": 0.1 * seed}, "note": "x" * 7000,
                   "resolved_method": {"noise": {"kind": "circular_shift", "strength": 0.3}, "test_batch_size": 10}},
        "params_hash": params_hash,
        "history": [{"epoch": e, "train_loss": 2.0 / e + seed, "train_top1": 50.0 + e + seed, "seconds": 0.5}
                    for e in range(1, epochs + 1)],
        "evaluations": {k: v + seed for k, v in EVALUATIONS.items()}, "test_top1": 91.2 + seed,
        "diagnostics": dict(DIAGNOSTICS),
        "provenance": {"git_commit": "0123abcd" * 5, "git_dirty": False, "data_version": "d" * 64,
                       "device": "cpu", "torch_version": "2.5.1", "timm_version": "1.0.11",
                       "python_version": "3.11.7", "snakemake_rule": "train",
                       "wildcards": {"experiment_set": experiment_set, "run_id": run_id}},
        "mlflow_run_id": None,
    }


def write_run(results: Path, metrics: dict) -> Path:
    run_dir = results / "runs" / metrics["experiment_set"] / metrics["run_id"]
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "train.log").write_text("epoch 1 ...\n")
    return run_dir


@contextmanager
def silent_server(lifetime_s: float = 300):
    """A port on 127.0.0.1 that accepts connections and never answers: a hung tracking server. It holds what
    it accepts until the block ends, and stops accepting after lifetime_s whatever happens."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    listener.settimeout(0.2)
    held, stop = [], threading.Event()

    def accept() -> None:
        deadline = time.monotonic() + lifetime_s
        while not stop.is_set() and time.monotonic() < deadline:
            try:
                held.append(listener.accept()[0])
            except OSError:  # timeout: look at stop and the deadline again
                pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"
    finally:
        stop.set()
        thread.join(5)
        for conn in held:
            conn.close()
        listener.close()


def write_audit(folder: Path, verdicts: list[str]) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    audit, cells, markdown = folder / "audit.csv", folder / "effects_cells.csv", folder / "audit.md"
    rows = "".join(f"vpn.claim{i},{v},{'' if i else 'nan'}\n" for i, v in enumerate(verdicts))
    audit.write_text("claim_id,verdict,p_holm\n" + rows)
    cells.write_text("claim_id,cell,mean\nvpn.claim1,fmnist/sr,0.5\n")
    markdown.write_text("# Audit\n")
    return [audit, cells, markdown]
