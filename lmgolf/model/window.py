"""The window models of the small-model ladder (`family=linear|mlp`), used instead of the blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmgolf.config import ModelConfig
from lmgolf.model.context import Context


class WindowPredictor(nn.Module):
    """The embeddings of the last `window` tokens, concatenated (zeros before the sequence or the document
    starts), through one linear map (`linear`) or a one-hidden-layer MLP (`mlp`) back to d_model. The
    decoding cache keeps the last window - 1 inputs and their documents."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.window, width = cfg.window, cfg.window * cfg.d_model
        self.up = nn.Linear(width, cfg.hidden if cfg.family == "mlp" else cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden, cfg.d_model, bias=cfg.bias) if cfg.family == "mlp" else None

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        B, T, d = x.shape
        k = self.window - 1
        docs = ctx.docs
        past = ctx.recall(self)
        before, before_docs = past if past is not None else (x.new_zeros(B, k, d), docs.new_full((B, k), -1))
        seq, seq_docs = torch.cat((before.to(x.dtype), x), dim=1), torch.cat((before_docs, docs), dim=1)
        parts = [seq[:, k - lag:k - lag + T] * (seq_docs[:, k - lag:k - lag + T] == docs).unsqueeze(-1)
                 for lag in range(self.window)]  # the token `lag` steps back, or zeros across a start
        ctx.keep(self, (seq[:, seq.size(1) - k:], seq_docs[:, seq.size(1) - k:]))
        h = self.up(torch.cat(parts, dim=-1))
        return self.proj(F.gelu(h)) if self.proj is not None else h
