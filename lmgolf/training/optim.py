"""Optimizers and the learning-rate schedule.

`muon`: Muon (momentum, then Newton-Schulz orthogonalization of the update) for the weights of linear
maps; Adam for the lookup tables, an untied head, and every gain, scale, bias and gate. Each parameter's
role comes from lmgolf.params.
`adamw`: AdamW for everything, with weight decay on matrices only (nanoGPT's split).
Muon's weight decay is decoupled (AdamW-style): the weights shrink by lr * weight_decay, apart from the gradient.
Under torchrun Muon is parallel: each rank orthogonalizes its share of the matrices, then all-gathers (Muon.step).
The schedule: lr_multiplier (linear or cosine decay), warmdown_fraction (train.warmdown_steps), muon_momentum.
"""

from __future__ import annotations

import math

import torch
import torch.distributed as dist
from torch import nn

from lmgolf.config import TrainConfig
from lmgolf.params import ROLES, classify


def newton_schulz(g: torch.Tensor, steps: int = 5, dtype: torch.dtype = torch.bfloat16) -> torch.Tensor:
    """An approximately orthogonal matrix with the singular vectors of g (quintic iteration, Jordan et al.)."""
    a, b, c = 3.4445, -4.7750, 2.0315
    x = g.to(dtype)
    transposed = x.size(0) > x.size(1)
    if transposed:
        x = x.T
    x = x / (x.norm() + 1e-7)
    for _ in range(steps):
        s = x @ x.T
        x = a * x + (b * s + c * s @ s) @ x
    return (x.T if transposed else x).to(g.dtype)


class Muon(torch.optim.Optimizer):
    """Momentum, then Newton-Schulz orthogonalization of the update, scaled by sqrt(max(1, rows / cols)).

    Parallel Muon: under torch.distributed with more than one process (torchrun), each rank
    orthogonalizes its share of the matrices (shares balanced by size, the same on every rank) and the
    results are all-gathered, so every rank applies the identical update the one-process optimizer would,
    for about 1/world_size of the Newton-Schulz cost. Automatic; there is no config field. The momentum
    buffers are updated on every rank (cheap), so every rank's state, and its checkpoint, stays the same.
    """

    def __init__(self, params, lr: float, momentum: float = 0.95, weight_decay: float = 0.0,
                 nesterov: bool = True, ns_steps: int = 5, ns_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        work = []  # (group, parameter) of every parameter with a gradient, in a fixed order
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                state["momentum_buffer"].mul_(group["momentum"]).add_(p.grad)
                work.append((group, p))
        for (group, p), update in zip(work, self._orthogonalized(work)):
            update *= max(1.0, p.size(0) / p.size(1)) ** 0.5
            if group["weight_decay"]:  # decoupled (AdamW-style): on the weights, scaled by lr, not via the gradient
                p.mul_(1 - group["lr"] * group["weight_decay"])
            p.add_(update, alpha=-group["lr"])

    def _update(self, group: dict, p: torch.Tensor) -> torch.Tensor:
        """The orthogonalized momentum update of p (Nesterov: the gradient plus momentum x the buffer)."""
        buf = self.state[p]["momentum_buffer"]
        update = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
        return newton_schulz(update, group["ns_steps"], self.ns_dtype)

    def _orthogonalized(self, work: list):
        """Every parameter's update: one at a time on one process; else each rank computes its share and
        the shares are all-gathered (one collective, each rank's share flattened and padded to the largest)."""
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        if world == 1 or not work:
            return (self._update(group, p) for group, p in work)
        owner = assign_shares([p.numel() for _, p in work], world)
        rank = dist.get_rank()
        sizes = [sum(p.numel() for (_, p), r in zip(work, owner) if r == k) for k in range(world)]
        ref = work[0][1]
        flat = torch.zeros(max(sizes), dtype=ref.dtype, device=ref.device)
        mine = [self._update(group, p).reshape(-1) for (group, p), r in zip(work, owner) if r == rank]
        if mine:
            flat[:sizes[rank]] = torch.cat(mine)
        gathered = [torch.empty_like(flat) for _ in range(world)]
        dist.all_gather(gathered, flat)
        offsets, updates = [0] * world, []
        for (_, p), r in zip(work, owner):
            updates.append(gathered[r][offsets[r]:offsets[r] + p.numel()].view_as(p))
            offsets[r] += p.numel()
        return updates


def assign_shares(sizes: list[int], world: int) -> list[int]:
    """The rank that orthogonalizes each matrix: largest first, each to the least-loaded rank (ties: the lowest)."""
    load, owner = [0] * world, [0] * len(sizes)
    for i in sorted(range(len(sizes)), key=lambda i: (-sizes[i], i)):
        owner[i] = min(range(world), key=lambda r: (load[r], r))
        load[owner[i]] += sizes[i]
    return owner


def build_optimizers(model: nn.Module, cfg: TrainConfig, ns_dtype: torch.dtype = torch.bfloat16) -> list[torch.optim.Optimizer]:
    params = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    betas = (cfg.beta1, cfg.beta2)
    fused = {"fused": True} if all(p.is_cuda for _, p in params) else {}
    if cfg.optimizer == "adamw":
        decay = [p for _, p in params if p.dim() >= 2]
        no_decay = [p for _, p in params if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
        return [torch.optim.AdamW(groups, lr=cfg.lr, betas=betas, **fused)]
    by_role = {role: [] for role in ROLES}
    for name, p in params:
        by_role[classify(name).role].append(p)
    lrs = {"embedding": cfg.embed_lr, "head": cfg.head_lr, "scalar": cfg.scalar_lr}
    adam_groups = [{"params": by_role[role], "lr": lr} for role, lr in lrs.items() if by_role[role]]
    optimizers = [torch.optim.Adam(adam_groups, betas=betas, eps=1e-10, **fused)] if adam_groups else []
    if by_role["matrix"]:
        optimizers.append(Muon(by_role["matrix"], lr=cfg.matrix_lr, momentum=cfg.momentum,
                               weight_decay=cfg.weight_decay, ns_dtype=ns_dtype))
    return optimizers


def lr_multiplier(progress: float, cfg: TrainConfig, warmdown: float | None = None) -> float:
    """Warmup ramp over the first `warmup` of the budget, then the decay; progress is the fraction of the budget used.

    decay=linear: flat, then a linear warmdown over the last `warmdown` of the budget (the argument, else
    cfg.warmdown; see warmdown_fraction for train.warmdown_steps) to min_lr_frac.
    decay=cosine: from the end of the warmup to the end of the budget, t from 0 to 1,
    min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + cos(pi * t)); the warmdown is unused.
    """
    if cfg.warmup > 0 and progress < cfg.warmup:
        return max(progress / cfg.warmup, 1e-3)
    if cfg.decay == "cosine":
        t = min(1.0, max(0.0, (progress - cfg.warmup) / (1 - cfg.warmup))) if cfg.warmup < 1 else 1.0
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))
    warmdown = cfg.warmdown if warmdown is None else warmdown
    if warmdown > 0 and progress > 1 - warmdown:
        remaining = max(0.0, 1 - progress) / warmdown
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * remaining
    return 1.0


def warmdown_fraction(cfg: TrainConfig, step: int, elapsed: float) -> float:
    """The linear warmdown's share of the budget: train.warmdown, or with train.warmdown_steps=N the last N steps.

    Step budget: N / max_steps. Time budget: N steps at the mean step time so far, N * (elapsed / step) /
    time_budget, so the warmdown starts once the estimated remaining steps, remaining time / mean step time,
    are <= N, and the multiplier is then those steps / N (the challenge baseline's rule); 0 before the first
    step. With both budgets the larger (the one that ends first). A function of (step, elapsed), which
    checkpoints keep, so a resumed run continues the same schedule.
    """
    if not cfg.warmdown_steps:
        return cfg.warmdown
    shares = []
    if cfg.max_steps:
        shares.append(cfg.warmdown_steps / cfg.max_steps)
    if cfg.time_budget:
        shares.append(cfg.warmdown_steps * elapsed / (step * cfg.time_budget) if step else 0.0)
    return min(1.0, max(shares))


def muon_momentum(step: int, cfg: TrainConfig) -> float:
    """Muon's momentum at optimizer step `step` (steps done so far): linear from momentum_start to momentum
    over the first momentum_warmup_steps steps (the baseline: 0.85 -> 0.95 over 500), then momentum."""
    if not cfg.momentum_warmup_steps:
        return cfg.momentum
    frac = min(step / cfg.momentum_warmup_steps, 1.0)
    return (1 - frac) * cfg.momentum_start + frac * cfg.momentum


def set_momentum(optimizers: list[torch.optim.Optimizer], momentum: float) -> None:
    for opt in optimizers:
        if isinstance(opt, Muon):
            for group in opt.param_groups:
                group["momentum"] = momentum


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * multiplier
