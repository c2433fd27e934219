"""Several processes per run: launched by torchrun (the train rule does it when cluster.train_gpus > 1),
joined here, and trained through PyTorch's DistributedDataParallel (gloo on CPU, NCCL on CUDA).

batch_size is per process: each step, every process takes its own batch_size samples of one shared
global batch of batch_size x world_size (all processes draw the same epoch order, because they seed the
same RNG and consume it in lockstep), so batch-mixing noise mixes within each process's batch, as it
would on one device of the authors' setup. The same lockstep means every process draws the same
random-noise stream for its own samples. Process 0 evaluates, checkpoints and writes the results.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def describe(self) -> dict:
        return {"world_size": self.size, "backend": dist.get_backend() if self.size > 1 else None}


def join() -> World:
    """This process's place in the run: torchrun's environment, or a world of one."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    if size == 1:
        return World()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        torch.cuda.set_device(local_rank)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    return World(rank, size, local_rank)


def leave(world: World) -> None:
    if world.size > 1:
        dist.barrier()
        dist.destroy_process_group()


def mean_over(world: World, value: torch.Tensor) -> torch.Tensor:
    """The mean of a scalar tensor over all processes (itself in a world of one)."""
    if world.size == 1:
        return value
    value = value.clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return value / world.size


def wrap(module: torch.nn.Module, world: World, device: torch.device) -> torch.nn.Module:
    """DistributedDataParallel over the module whose forward is the training loss."""
    if world.size == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(
        module, device_ids=[device.index] if device.type == "cuda" else None)
