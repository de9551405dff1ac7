"""Positions: RoPE (full or partial) inside attention, or a learned absolute table on the embedding."""

from __future__ import annotations

import torch
from torch import nn


class Rotary(nn.Module):
    """RoPE: rotate pairs (i, i + d/2) of the first d = `dims` dimensions of each head by
    position-dependent angles; the other head dimensions pass through (partial RoPE)."""

    def __init__(self, dims: int, base: float):
        super().__init__()
        self.dims = dims
        inv_freq = 1.0 / (base ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, start: int | torch.Tensor = 0) -> torch.Tensor:
        """x: (batch, heads, time, head_dim), its first position at `start`, or at each row's own positions
        (`start` a (batch, time) tensor)."""
        if isinstance(start, torch.Tensor):
            angles = start[:, None, :, None].float() * self.inv_freq  # (batch, 1, time, dims / 2)
        else:
            t = torch.arange(start, start + x.size(-2), device=x.device, dtype=torch.float32)
            angles = torch.outer(t, self.inv_freq)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        rotated, rest = x[..., :self.dims], x[..., self.dims:]
        x1, x2 = rotated.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest), dim=-1)


class LearnedPositions(nn.Embedding):
    """Learned absolute positions (GPT-2), an embedding feature: row t of a context x d table is added
    to the input at position t."""

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        if ctx.positions is None:
            positions, end = torch.arange(ctx.start, ctx.start + x.size(1), device=x.device), ctx.start + x.size(1)
        else:  # each row at its own positions
            positions, end = ctx.positions, int(ctx.positions.max()) + 1
        if end > self.num_embeddings:
            raise ValueError(f"sequence of {end} tokens exceeds the learned context {self.num_embeddings}")
        return x + super().forward(positions)
