"""Optimizers and the learning-rate schedule.

`muon`: Muon (momentum, then Newton-Schulz orthogonalization of the update) for the weights of linear
maps; Adam for the lookup tables, an untied head, and every gain, scale, bias and gate. Each parameter's
role comes from lmgolf.params.
`adamw`: AdamW for everything, with weight decay on matrices only (nanoGPT's split).
"""

from __future__ import annotations

import torch
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
    def __init__(self, params, lr: float, momentum: float = 0.95, weight_decay: float = 0.0,
                 nesterov: bool = True, ns_steps: int = 5, ns_dtype: torch.dtype = torch.bfloat16):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, nesterov=nesterov, ns_steps=ns_steps))
        self.ns_dtype = ns_dtype

    @torch.no_grad()
    def step(self):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(p.grad)
                update = p.grad.add(buf, alpha=group["momentum"]) if group["nesterov"] else buf
                update = newton_schulz(update, group["ns_steps"], self.ns_dtype)
                update *= max(1.0, p.size(0) / p.size(1)) ** 0.5
                if group["weight_decay"]:
                    p.mul_(1 - group["lr"] * group["weight_decay"])
                p.add_(update, alpha=-group["lr"])


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


def lr_multiplier(progress: float, cfg: TrainConfig) -> float:
    """Warmup ramp, flat, then linear warmdown to min_lr_frac; progress is the fraction of the budget used."""
    if cfg.warmup > 0 and progress < cfg.warmup:
        return max(progress / cfg.warmup, 1e-3)
    if cfg.warmdown > 0 and progress > 1 - cfg.warmdown:
        remaining = max(0.0, 1 - progress) / cfg.warmdown
        return cfg.min_lr_frac + (1 - cfg.min_lr_frac) * remaining
    return 1.0


def set_lr(optimizers: list[torch.optim.Optimizer], multiplier: float) -> None:
    for opt in optimizers:
        for group in opt.param_groups:
            group.setdefault("initial_lr", group["lr"])
            group["lr"] = group["initial_lr"] * multiplier
