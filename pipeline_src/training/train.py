"""The one training loop every method uses.

The dataset lives on the device as uint8 tensors; batches are index gathers from a
seeded permutation, converted to float [0, 1] on the fly. Each epoch ends with an
atomic checkpoint (weights, optimizer, schedule, RNG state, history), so a killed
job started again continues where it stopped and ends with the same numbers as an
uninterrupted run. A finished run leaves model.pt and trained.json; the evaluate stage
(pipeline_src/evaluation/) measures it on the test set.
"""
from __future__ import annotations

import math
import sys
import time
from pathlib import Path

import torch
from tqdm import tqdm

from pipeline_src.spec.config import RunConfig
from pipeline_src.training.distributed import World, join, leave, mean_over, wrap
from pipeline_src.methods.base import predict, top1
from pipeline_src.methods.device import autocast as device_autocast, select_device
from pipeline_src.methods.registry import build_run_method
from pipeline_src.spec.run_record import CHECKPOINT_NAME, TRAINED_FORMAT, run_head, trained_path
from pipeline_src.fileio import torch_save_atomic, write_json
from pipeline_src.provenance import apply_determinism, code_version, environment
from pipeline_src.data.files import sha256_file
from pipeline_src.data.stream import ImageStream, to_input

TRAIN_EVAL_SAMPLES = 1000  # train accuracy is measured on this many fixed training images
EPOCH_DIAGNOSTIC_SAMPLES = 256  # and a method's per-epoch diagnostics on the first this many of them


def make_optimizer(params, spec: dict) -> torch.optim.Optimizer:
    if spec["name"] == "sgd":
        return torch.optim.SGD(params, lr=spec["lr"], momentum=spec["momentum"], weight_decay=spec["weight_decay"])
    cls = torch.optim.AdamW if spec["name"] == "adamw" else torch.optim.Adam
    return cls(params, lr=spec["lr"], weight_decay=spec["weight_decay"])


def lr_factor(epoch: int, spec: dict, epochs: int) -> float:
    """Multiplier of the base lr in `epoch` (0-based): linear warm-up from 0 over warmup_epochs, then
    constant or cosine down to min_lr. As timm's CosineLRScheduler (the NoisyNN authors'; warmup_prefix
    False), the cosine runs over all epochs from epoch 0 and the warm-up replaces its start. `spec` is a run's
    optimizer as the run table gives it: the schema has filled every key."""
    warmup = spec["warmup_epochs"]
    if epoch < warmup:
        return epoch / warmup
    if spec["schedule"] != "cosine":
        return 1.0
    floor = spec["min_lr"] / spec["lr"]
    return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * epoch / epochs))


def make_schedule(optimizer, spec: dict, epochs: int):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda epoch: lr_factor(epoch, spec, epochs))


def batches(n: int, batch_size: int, world: World = World()) -> list[torch.Tensor]:
    """A seeded permutation cut into batches; a trailing batch of one is dropped (batch-mixing noise needs two).
    With several processes: global batches of batch_size x world.size, of which this process takes its part."""
    if world.size == 1:
        parts = list(torch.split(torch.randperm(n), batch_size))
        return parts[:-1] if len(parts) > 1 and len(parts[-1]) == 1 else parts
    parts = list(torch.split(torch.randperm(n), batch_size * world.size))
    if len(parts) > 1 and len(parts[-1]) // world.size < 2:  # decided on the global batch: all processes step together
        parts = parts[:-1]
    return [part.tensor_split(world.size)[world.rank] for part in parts]


def _probe_predictions(model, x_train, probe: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Predictions on the fixed training images that measure train accuracy; a stream is decoded a batch at
    a time, never the whole probe at once."""
    if isinstance(x_train, ImageStream):
        return predict(model, x_train.to_device(device), batch_size, order=probe)
    return predict(model, to_input(x_train[probe], device), batch_size)


def train_epoch(method, optimizer, x_train: torch.Tensor, y_train: torch.Tensor, batch_size: int,
                desc: str = "train", world: World = World(), step=None) -> float:
    """One pass over the uint8 training set (device-resident, or an ImageStream decoding each batch while the
    one before it trains); returns the mean training loss (over all processes). step: the module whose
    forward is the loss (method, or its DistributedDataParallel)."""
    device = y_train.device
    step = step or method
    method.train()
    total_loss, seen = torch.zeros((), device=device), 0  # summed on the device: no sync per step
    # the order is drawn on the CPU (the same on every device) and copied to the device once per epoch
    cpu_order = batches(len(x_train), batch_size, world)
    order = [idx.to(device, non_blocking=True) for idx in cpu_order]
    images = (x_train.prefetched(cpu_order) if isinstance(x_train, ImageStream)
              else (x_train[idx] for idx in order))
    for idx, x in tqdm(zip(order, images), total=len(order), desc=desc, file=sys.stderr, mininterval=2.0,
                       leave=False, disable=not world.is_main):
        with device_autocast(device):
            loss = step(to_input(x, device), y_train[idx])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        total_loss += loss.detach().float() * len(idx)
        seen += len(idx)
    return mean_over(world, total_loss).item() / seen


def _checkpoint_state(method, optimizer, schedule, epoch, history, params_hash, code_versions) -> dict:
    state = {"method": method.state_dict(), "optimizer": optimizer.state_dict(), "schedule": schedule.state_dict(),
             "epoch": epoch, "history": history, "params_hash": params_hash, "code_versions": code_versions,
             "rng": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda_rng"] = torch.cuda.get_rng_state_all()
    return state


def code_identity(provenance: dict) -> dict:
    """The code a process trains with: its commit, whether the tree was dirty, and the package's own hash
    (which a dirty tree's commit does not pin)."""
    return {"git_commit": provenance.get("git_commit"), "git_dirty": provenance.get("git_dirty"),
            "package_hash": code_version()}


def _load_checkpoint(path: Path) -> dict | None:
    """The epoch checkpoint's state; None once an unreadable one is moved aside (its writes are atomic,
    but a full disk, a copy cut short or a bad block can still damage it), so that the run trains from
    scratch rather than failing on it at every rerun."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        if isinstance(state, dict) and "epoch" in state:
            return state
        reason = "not a training checkpoint"
    except Exception as err:  # noqa: BLE001 - torch raises RuntimeError, EOFError, UnpicklingError, ... for it
        reason = " ".join(str(err).split())[:200] or type(err).__name__
    aside = path.with_name(f"{path.name}.unreadable")
    path.replace(aside)
    print(f"note: {path} is unreadable ({reason}); moved it to {aside.name} and training this run from epoch 1",
          file=sys.stderr)
    return None


def _try_resume(path: Path, params_hash: str, method, optimizer, schedule, code: dict):
    """Returns (start_epoch, history, code_versions); a checkpoint of other params is ignored, not trusted.
    A resumed run keeps the code versions it trained under before, and adds this one if it differs, so its
    record names every version (metrics.json provenance.code_versions, each with the first epoch it trained)."""
    fresh = (0, [], [{**code, "from_epoch": 1}])
    state = _load_checkpoint(path) if path.exists() else None
    if state is None:
        return fresh
    if state.get("params_hash") != params_hash:
        print(f"ignoring {path}: it belongs to other params", file=sys.stderr)
        return fresh
    method.load_state_dict(state["method"])
    optimizer.load_state_dict(state["optimizer"])
    schedule.load_state_dict(state["schedule"])
    torch.set_rng_state(state["rng"])
    if "cuda_rng" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    # checkpoints from before versions were kept record none: the version then is unknown
    versions = state.get("code_versions") or [{"git_commit": "unknown", "git_dirty": None, "package_hash": None,
                                              "from_epoch": 1}]
    if {k: v for k, v in versions[-1].items() if k != "from_epoch"} != code:
        versions = [*versions, {**code, "from_epoch": state["epoch"] + 1}]
        print(f"resuming from {path} after epoch {state['epoch']} under other code than it began with "
              f"(commit {code['git_commit']}); metrics.json records every version", file=sys.stderr)
    else:
        print(f"resuming from {path} after epoch {state['epoch']}", file=sys.stderr)
    return state["epoch"], state["history"], versions


def _file_sha256(path: str | None) -> str | None:
    if not path:
        return None
    from pipeline_src.spec.config import weights_path

    return sha256_file(weights_path(path))


def train_run(cfg: RunConfig, data, out_dir: Path, base_checkpoint: Path | None = None,
              threads: int | None = None, rule: str = "train", model_path: Path | None = None,
              on_epoch=None) -> dict:
    """Train one run; returns its trained record (spec/run_record.py), or {} on a torchrun process other
    than the first. The evaluate job (evaluation/evaluate.py) measures the model afterwards.

    cfg: the run's training identity (RunConfig.training_identity; a full RunConfig trains the same).
    data: the prepared dataset (data.PreparedFiles, or its folder). Writes model_path (default
    out_dir/model.pt) and trained.json beside it; the epoch checkpoint goes to out_dir.
    on_epoch(entry), if given, sees each epoch's history entry once it is checkpointed (process 0)."""
    from pipeline_src.data.prepared import load_prepared

    cfg = cfg.training_identity()
    if threads:
        # as many intra-op threads as the scheduler gave the job: parallel jobs that each spin up
        # one thread per core slow each other down many times over
        torch.set_num_threads(threads)

    # the commit of the code this process loaded: the worktree may move on while a long run trains
    head = run_head(cfg, rule)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    determinism = apply_determinism()  # before any CUDA op: cuBLAS reads its workspace setting when it starts
    world = join()
    device = select_device(cfg.device, world.local_rank)
    torch.manual_seed(cfg.seed)  # the same on every process: the same initial weights and epoch orders

    data = load_prepared(data, workers=threads or 1)
    model_path = Path(model_path or out_dir / "model.pt")
    method = build_run_method(cfg, data, base_checkpoint).to(device)
    if device.type == "cuda":
        method = method.to(memory_format=torch.channels_last)
    if cfg.compile:
        # in place (nn.Module.compile): the state_dict keys, the noise hooks and resuming stay as they are
        method.model.compile()
    step = wrap(method, world, device)
    optimizer = make_optimizer([p for p in method.parameters() if p.requires_grad], cfg.optimizer)
    schedule = make_schedule(optimizer, cfg.optimizer, cfg.epochs)
    params_hash = cfg.params_hash()
    checkpoint = out_dir / CHECKPOINT_NAME
    start_epoch, history, code_versions = _try_resume(checkpoint, params_hash, method, optimizer, schedule,
                                                      code_identity(head["provenance"]))

    # a streamed training set stays in its files; an in-memory one moves to the device once
    x_train = data.x_train if isinstance(data.x_train, ImageStream) else data.x_train.to(device)
    y_train = data.y_train.to(device)
    train_probe = torch.arange(min(TRAIN_EVAL_SAMPLES, len(x_train)), device=device)
    autocast = device_autocast(device)
    # CPU this process spent before its first training step: imports, data, model (bench_startup.py)
    startup_cpu_seconds = time.process_time()

    for epoch in range(start_epoch, cfg.epochs):
        started = time.perf_counter()
        train_loss = train_epoch(method, optimizer, x_train, y_train, cfg.batch_size,
                                 desc=f"{cfg.run_id} epoch {epoch + 1}/{cfg.epochs}", world=world, step=step)
        if not math.isfinite(train_loss):  # diverged: no checkpoint of it, and no model.pt or result
            raise ValueError(f"run {cfg.run_id}: the training loss became {train_loss} in epoch {epoch + 1}; "
                             "nothing written for this run (try a lower lr)")
        schedule.step()
        method.eval()
        with torch.inference_mode(), autocast:
            train_pred = _probe_predictions(method.model, x_train, train_probe, cfg.eval_batch_size, device)
            probe = train_probe[:EPOCH_DIAGNOSTIC_SAMPLES]
            tracked = method.diagnostics(to_input(x_train[probe], device), y_train[probe], None, cfg.eval_batch_size)
        history.append({"epoch": epoch + 1, "train_loss": train_loss,
                        "train_top1": top1(train_pred, y_train[train_probe]), **tracked,
                        "seconds": time.perf_counter() - started})
        if world.is_main:
            per_epoch = sum(h["seconds"] for h in history[start_epoch:]) / (epoch + 1 - start_epoch)
            eta = round(per_epoch * (cfg.epochs - epoch - 1))
            print(f"epoch {epoch + 1}/{cfg.epochs} loss {history[-1]['train_loss']:.4f} "
                  f"train_top1 {history[-1]['train_top1']:.2f} eta {eta // 60}m{eta % 60:02d}s", file=sys.stderr)
            torch_save_atomic(_checkpoint_state(method, optimizer, schedule, epoch + 1, history, params_hash,
                                                code_versions), checkpoint)
            if on_epoch:
                on_epoch(history[-1])

    if not world.is_main:  # process 0 writes; the others are done
        leave(world)
        return {}
    # "model" is what a frozen VPN run loads; "method" adds what the method learned besides (the VPN
    # generator); "rng" is the stream training ended on, which evaluation continues from, as it did when
    # both ran in one process (a VPN class enumeration draws from it)
    rng = {"rng": torch.get_rng_state()}
    if device.type == "cuda":
        rng["cuda_rng"] = torch.cuda.get_rng_state(device)
    torch_save_atomic({"model": method.model.state_dict(), "method": method.state_dict(), **rng}, model_path)
    trained = {
        "format": TRAINED_FORMAT,
        **head,
        "params": dict(cfg.__dict__),
        "history": history,
        "startup_cpu_seconds": startup_cpu_seconds,
        # batch_size (params) is per process; one process unless launched by torchrun
        "distributed": {**world.describe(), "per_process_batch_size": cfg.batch_size},
        "provenance": {**head["provenance"], "data_version": data.manifest["data_version"],
                       "dvc_hash": data.manifest.get("dvc_hash"), "device": str(device),
                       "weights_sha256": _file_sha256(cfg.model_cfg.get("weights_file")),
                       "code_versions": code_versions,
                       **environment(device), "determinism": determinism},
    }
    write_json(trained_path(model_path), trained)
    checkpoint.unlink(missing_ok=True)
    leave(world)
    return trained
