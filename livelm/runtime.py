"""Autocast and process groups (DDP, FSDP) for training; livelm/machine.py picks the device and dtypes."""
from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from livelm.machine import pick_device


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


@dataclass
class Dist:
    """Who this process is in a torchrun job (world 1 when run plainly)."""
    rank: int = 0
    local_rank: int = 0
    world: int = 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str = "auto") -> tuple[Dist, torch.device]:
    """Join the torchrun process group if launched under torchrun; pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", 1))
    if world == 1:
        return Dist(), pick_device(device_name)
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    if not dist.is_initialized():
        dist.init_process_group(backend=backend)
    if device.type == "cpu":
        # N processes on one machine each default to all cores: divide them, or they fight for the CPU
        local_world = int(os.environ.get("LOCAL_WORLD_SIZE", world))
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // local_world))
    return Dist(rank, local_rank, world), device


def shard_model(model: torch.nn.Module, device: torch.device, dtype: torch.dtype, world: int) -> torch.nn.Module:
    """FSDP2: shard parameters (and so gradients and optimizer state) across the `world` processes.

    Each process keeps 1/world of every parameter as a DTensor; before a module
    runs, its full weights are all-gathered, and freed again after; gradients are
    reduce-scattered so each process only ever holds (and updates) its shard.
    The unit of gathering is one block: every element of every nn.ModuleList
    (the transformer blocks of each architecture) is its own unit, sharded
    innermost first, and the root takes what is left (embeddings, final norm,
    head — so tied embedding/head weights stay in one unit, as FSDP needs).
    Peak memory is then all shards plus about one block in full, not the model.

    The model may still be on the CPU: fully_shard moves each unit to `device`
    as it shards it, so the full model never has to fit on one GPU at once.
    FSDP2 (torch.distributed.fsdp.fully_shard) runs on CPU with gloo as well as
    on CUDA with NCCL; checked on torch 2.13.

    On CUDA with bf16 autocast the parameters are gathered in bf16 (half the
    traffic and memory) while gradients are reduced and the optimizer steps in
    fp32: the usual mixed-precision recipe. fp16 would also need a sharded
    gradient scaler; the trainer refuses it.
    """
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard
    mesh = init_device_mesh(device.type, (world,))
    if device.type == "cuda" and dtype == torch.bfloat16:
        mp = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
    else:
        mp = MixedPrecisionPolicy()
    units = [unit for m in model.modules() if isinstance(m, torch.nn.ModuleList) for unit in m]
    for unit in reversed(units):  # nested lists come later in modules(): shard children before parents
        fully_shard(unit, mesh=mesh, mp_policy=mp)
    fully_shard(model, mesh=mesh, mp_policy=mp)
    return model


def is_sharded(model: torch.nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule
    return isinstance(model, FSDPModule)
