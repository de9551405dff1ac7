"""The feed-forward layer: a dense MLP (GELU, SwiGLU, ReLU², LeakyReLU²) or a mixture of experts."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from lmgolf.config import ModelConfig


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind, self.slope = cfg.mlp, cfg.leaky_slope
        self.up = nn.Linear(cfg.d_model, cfg.hidden, bias=cfg.bias)
        self.gate = nn.Linear(cfg.d_model, cfg.hidden, bias=cfg.bias) if cfg.mlp == "swiglu" else None
        self.proj = nn.Linear(cfg.hidden, cfg.d_model, bias=cfg.bias)
        self.dropout = nn.Dropout(cfg.dropout_rate("resid")) if cfg.dropout_rate("resid") else nn.Identity()

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "relu2":
            h = F.relu(self.up(x)).square()
        elif self.kind == "leaky_relu2":
            h = F.leaky_relu(self.up(x), self.slope).square()
        else:
            h = F.gelu(self.up(x))
        return self.dropout(self.proj(h))


class MoE(nn.Module):
    """Mixture of experts: a router picks each token's top-k experts (MLPs) and mixes their outputs
    with the renormalized router probabilities. Every token is processed (no capacity, no dropping),
    so the layer stays causal. Each application reports to the forward's context the Switch Transformer
    load-balance loss and the share of routed slots each expert got."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k = cfg.moe_top_k
        self.router = nn.Linear(cfg.d_model, cfg.moe_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.moe_experts))

    def forward(self, x: torch.Tensor, ctx=None) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        probs = self.router(flat).float().softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot, None].to(flat.dtype))
        if ctx is not None:
            routed = torch.zeros_like(probs).scatter_(1, chosen, 1.0).mean(0) / self.top_k  # share of slots
            ctx.balance_losses.append(len(self.experts) * (routed * probs.mean(0)).sum())
            ctx.expert_usage.append(routed.detach())
        return out.view_as(x)

    def matmul_weights(self) -> int:
        """Weights a token multiplies: the router's and its top-k experts'."""
        expert = sum(m.weight.numel() for m in self.experts[0].modules() if isinstance(m, nn.Linear))
        return self.router.weight.numel() + self.top_k * expert
