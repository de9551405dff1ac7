"""Device, precision and compilation choices, and the torchrun process group."""

from __future__ import annotations

import contextlib
import functools
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from lmgolf.errors import LmgolfError


def cpu_fields(cpuinfo: str | None = None) -> dict[str, str]:
    """The first processor's fields in /proc/cpuinfo (model name, flags, cpu MHz...); {} where it is absent."""
    if cpuinfo is None:
        try:
            with open("/proc/cpuinfo") as f:
                cpuinfo = f.read()
        except OSError:
            return {}
    first = cpuinfo.split("\n\n", 1)[0]
    return {k.strip(): v.strip() for k, sep, v in (line.partition(":") for line in first.splitlines()) if sep}


@functools.cache
def cpu_has_fast_bf16() -> bool:
    """AMX or AVX512-BF16: bf16 matmuls run several times faster than fp32 on such CPUs."""
    return bool({"amx_bf16", "avx512_bf16"} & set(cpu_fields().get("flags", "").split()))


def pick_device(choice: str = "auto") -> torch.device:
    if choice == "cuda" and not torch.cuda.is_available():
        raise LmgolfError("config field train.device: 'cuda' asked for, but no CUDA device is available")
    if choice == "auto":
        choice = "cuda" if torch.cuda.is_available() else "cpu"
    if choice == "cuda":
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    return torch.device("cpu")


def pick_dtype(choice: str, device: torch.device) -> torch.dtype:
    if choice == "bf16":
        return torch.bfloat16
    if choice == "fp32":
        return torch.float32
    if device.type == "cuda":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
    return torch.bfloat16 if cpu_has_fast_bf16() else torch.float32


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def want_compile(choice: str, device: torch.device) -> bool:
    """Compile on CUDA by default; on CPU compilation costs more than it saves in short runs."""
    if choice == "on":
        return True
    return choice == "auto" and device.type == "cuda"


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    owns_group: bool = False  # init_distributed started the process group (and close_distributed ends it)

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(device_choice: str) -> Dist:
    """Joins the torchrun process group when launched by torchrun; one process otherwise."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    owns = not dist.is_initialized()
    if owns:
        use_nccl = device_choice != "cpu" and torch.cuda.is_available()
        if use_nccl:
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", 0)))
        dist.init_process_group(backend="nccl" if use_nccl else "gloo")
    return Dist(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", 0)), owns)


def close_distributed(ddp: Dist) -> None:
    """Ends a process group that init_distributed started, every rank together: a rank that exits while
    another still talks to it can abort in the communication library's threads."""
    if ddp.owns_group and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
