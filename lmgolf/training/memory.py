"""Whether a model can be trained in the memory a device has free, asked before the model is built."""

from __future__ import annotations

import os

import torch

from lmgolf.config import ModelConfig
from lmgolf.errors import LmgolfError
from lmgolf.model.count import count_config

TRAIN_BYTES_PER_PARAM = 16  # float32 weights 4 + gradients 4 + optimizer state 8 (Adam's two moments)


def available_bytes(device: torch.device) -> int | None:
    """Memory free for a new model on `device`: the GPU's free memory, or the host's MemAvailable."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:
        with open("/proc/meminfo") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError):
        try:
            return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, AttributeError):
            return None


def check_training_memory(cfg: ModelConfig, device: torch.device) -> None:
    """Refuses, with the memory it needs, a model whose weights, gradients and optimizer state alone
    do not fit in the memory `device` has free (activations come on top)."""
    params = count_config(cfg).params
    need, have = TRAIN_BYTES_PER_PARAM * params, available_bytes(device)
    if have is not None and need > have:
        raise LmgolfError(f"config fields model.*: training {params:,} parameters needs at least {need / 2**30:,.1f} GiB "
                          f"(weights, gradients and optimizer state), {device.type} has {have / 2**30:,.1f} GiB free")
