"""A pack policy applied to tensors: which storage each gets, which are pruned, and each tensor's export
before encoding. Packing (lmgolf.packing.writer) and QAT (lmgolf.training.qat) both call these, so training
sees exactly what the artifact stores."""

from __future__ import annotations

import fnmatch

import torch

from lmgolf.config import PackPolicy
from lmgolf.packing.gptq import gptq_quantize
from lmgolf.packing.prune import lowrank_correction, magnitude_masks
from lmgolf.params import GROUPS, parameter_group
from lmgolf.quantize import STORAGES, as_rows


def storage_for(policy: PackPolicy, name: str, tensor) -> str:
    """The storage of one tensor: keep_fp32/keep_fp16 first, then the name-pattern and group rules, then
    the default; a quantizer storage only for 2-D tensors of at least min_quant_numel elements."""
    if _matches(name, policy.keep_fp32):
        return "fp32"
    if _matches(name, policy.keep_fp16):
        return "fp16"
    storage = _rule_for(policy, name) or policy.default_storage
    quantizable = tensor.ndim == 2 and tensor.numel() >= max(1, policy.min_quant_numel)
    return storage if quantizable or not STORAGES[storage].quantizer else "fp16"


def storages_for(policy: PackPolicy, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
    return {name: storage_for(policy, name, t) for name, t in tensors.items()}


def targets(name: str, keys) -> bool:
    """Whether a tensor is named by a list of parameter groups and name patterns."""
    return any(fnmatch.fnmatchcase(name, k) if k not in GROUPS else parameter_group(name) == k for k in keys)


def _rule_for(policy: PackPolicy, name: str) -> str | None:
    for pattern, storage in policy.group_storage.items():
        if pattern not in GROUPS and fnmatch.fnmatchcase(name, pattern):
            return storage
    return policy.group_storage.get(parameter_group(name))


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


def pruned_names(names, storages: dict[str, str], policy: PackPolicy) -> list[str]:
    """The tensors pack.prune prunes, in the given order: those prune_targets names, else every
    tensor in a quantizer storage."""
    if not policy.prune:
        return []
    return [n for n in names if (targets(n, policy.prune_targets) if policy.prune_targets
                                 else STORAGES[storages[n]].quantizer)]


def prune_masks(state: dict[str, torch.Tensor], storages: dict[str, str], policy: PackPolicy) -> dict[str, torch.Tensor]:
    """Keep masks (rows views) of the pruned tensors among `state`, chosen over them in their order."""
    chosen = pruned_names(state, storages, policy)
    return magnitude_masks({n: as_rows(state[n]) for n in chosen}, policy.prune, policy.prune_scope) if chosen else {}


def export_rows(name: str, w: torch.Tensor, storage: str, policy: PackPolicy, keep: torch.Tensor | None = None,
                hessian: torch.Tensor | None = None):
    """A tensor's export before encoding (steps 1-4 of lmgolf.packing.writer): (grid, snapped rows view,
    low-rank factors (A, B) or None)."""
    rows = as_rows(w)
    pruned = rows if keep is None else torch.where(keep, rows, torch.zeros_like(rows))
    grid = STORAGES[storage].grid(pruned.reshape(w.shape), policy)
    quantizer = STORAGES[storage].quantizer
    if hessian is not None and quantizer:
        snapped = gptq_quantize(rows, hessian, grid, policy.gptq_block, policy.gptq_damp, keep=keep)
    else:
        snapped = grid.snap(pruned, slice(None))
    rank = next((r for key, r in policy.lowrank.items() if targets(name, [key])), 0)
    lowrank = None
    if rank and quantizer and w.ndim == 2:
        lowrank = lowrank_correction(rows - snapped, rank)
    return grid, snapped, lowrank
