"""Normalization: RMSNorm or LayerNorm, LN scale, and the embedding norm."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmgolf.config import ModelConfig


class Norm(nn.Module):
    """RMSNorm or LayerNorm over the last dimension, with an optional learned gain."""

    def __init__(self, dim: int, kind: str, gain: bool, bias: bool, eps: float):
        super().__init__()
        self.kind, self.eps, self.dim = kind, eps, dim
        self.weight = nn.Parameter(torch.ones(dim)) if gain else None
        self.bias = nn.Parameter(torch.zeros(dim)) if gain and bias and kind == "layernorm" else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "rmsnorm":
            return F.rms_norm(x, (self.dim,), self.weight, self.eps)
        return F.layer_norm(x, (self.dim,), self.weight, self.bias, self.eps)


class ScaledNorm(Norm):
    """LN scale (`ln_scale`): the norm's output times a fixed factor, 1/sqrt(layer index + 1)."""

    def __init__(self, dim: int, kind: str, gain: bool, bias: bool, eps: float, scale: float):
        super().__init__(dim, kind, gain, bias, eps)
        self.scale = scale

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x) * self.scale


def make_norm(cfg: ModelConfig, scale: float = 1.0) -> Norm:
    args = (cfg.d_model, cfg.norm, cfg.norm_gain, cfg.bias, cfg.norm_eps)
    return ScaledNorm(*args, scale) if scale != 1.0 else Norm(*args)


def normalize_embedding(x: torch.Tensor, ctx) -> torch.Tensor:
    """`embed_norm`, an embedding feature: gain-free RMSNorm of the input to the first block."""
    return F.rms_norm(x, (x.size(-1),))
