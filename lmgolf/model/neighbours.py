"""Embedding features that read the previous token, never across a document start (a BOS token).

Each keeps its own decoding state in the cache: the last token it saw (and SmearGate its last input).
"""

from __future__ import annotations

import torch
from torch import nn


def previous_tokens(idx: torch.Tensor, before: torch.Tensor | None, bos_id: int | None) -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's previous token id (`before`: the token before idx[:, 0], if any) and whether it has
    one in the same document: a BOS token, and the first position of a fresh sequence, start without one."""
    if bos_id is None:
        raise ValueError("model.bigram_buckets and model.smear_gate need model.bos_id (training sets it)")
    first = before if before is not None else torch.zeros_like(idx[:, :1])
    prev = torch.cat((first, idx[:, :-1]), dim=1)
    has_prev = torch.ones_like(idx, dtype=torch.bool)
    if before is None:
        has_prev[:, 0] = False
    return prev, has_prev & (idx != bos_id)


class BigramHash(nn.Module):
    """An embedding of the hashed (previous, current) token pair, projected to d_model and added to the input."""

    def __init__(self, buckets: int, dim: int, d_model: int, bos_id: int | None = None):
        super().__init__()
        self.buckets, self.bos_id = buckets, bos_id
        self.table = nn.Embedding(buckets, dim)
        self.proj = nn.Linear(dim, d_model, bias=False)

    def bucket(self, idx: torch.Tensor, prev: torch.Tensor) -> torch.Tensor:
        return torch.bitwise_xor(36313 * idx, 27191 * prev) % self.buckets

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        prev, has_prev = previous_tokens(ctx.idx, ctx.recall(self), self.bos_id)
        ctx.keep(self, ctx.idx[:, -1:])
        return x + (self.proj(self.table(self.bucket(ctx.idx, prev))) * has_prev.unsqueeze(-1)).to(x.dtype)


class SmearGate(nn.Module):
    """x_t <- (1 - g_t) x_t + g_t x_(t-1), with g_t = sigmoid(w . x_t + b) a learned per-token gate."""

    def __init__(self, d_model: int, bos_id: int | None = None):
        super().__init__()
        self.bos_id = bos_id
        self.gate = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor, ctx) -> torch.Tensor:
        before_token, before = ctx.recall(self) or (None, None)
        ctx.keep(self, (ctx.idx[:, -1:], x[:, -1:]))
        _, has_prev = previous_tokens(ctx.idx, before_token, self.bos_id)
        first = before if before is not None else torch.zeros_like(x[:, :1])
        x_prev = torch.cat((first, x[:, :-1]), dim=1)
        g = torch.sigmoid(self.gate(x)) * has_prev.unsqueeze(-1)
        return x + g * (x_prev - x)
