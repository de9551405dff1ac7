"""The selective SSM token mixer (Mamba-style), used instead of attention in the blocks `ssm_layers` names."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmgolf.config import ModelConfig
from lmgolf.model.context import Context


class SelectiveSSM(nn.Module):
    """A Mamba-style selective state space mixer (Gu and Dao 2023) in plain PyTorch:
    in-projection to a signal u and a gate z; a causal depthwise convolution and SiLU on u; input-
    dependent step dt, input matrix B and output matrix C; the scan h_t = exp(dt_t A) h_(t-1) + dt_t B_t u_t,
    y_t = C_t h_t + D u_t; then y * SiLU(z) and an out-projection. With document masking the state is
    reset at a BOS and the convolution does not reach into the previous document. The decoding cache
    keeps the last ssm_conv - 1 inputs of the convolution (and their documents) and the state h."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        d, width, n = cfg.d_model, cfg.ssm_expand * cfg.d_model, cfg.ssm_state
        self.width, self.n_state, self.k = width, n, cfg.ssm_conv
        self.dt_rank = math.ceil(d / 16)
        self.in_proj = nn.Linear(d, 2 * width, bias=False)
        self.conv = nn.Parameter(torch.full((width, self.k), 1.0 / self.k))
        self.conv_bias = nn.Parameter(torch.zeros(width))
        self.x_proj = nn.Linear(width, self.dt_rank + 2 * n, bias=False)
        self.dt_proj = nn.Linear(self.dt_rank, width, bias=True)
        self.A_log = nn.Parameter(torch.log(torch.arange(1, n + 1, dtype=torch.float32)).repeat(width, 1))
        self.D = nn.Parameter(torch.ones(width))
        self.out_proj = nn.Linear(width, d, bias=False)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        B, T, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)
        docs = ctx.docs
        past = ctx.recall(self)
        if past is None:
            past = (u.new_zeros(B, self.k - 1, self.width), None if docs is None else docs.new_full((B, self.k - 1), -1),
                    torch.zeros(B, self.width, self.n_state, device=x.device))
        tail, tail_docs, h = past
        seq = torch.cat((tail.to(u.dtype), u), dim=1)
        seq_docs = None if docs is None else torch.cat((tail_docs, docs), dim=1)
        conv = self.conv_bias.to(u.dtype).expand_as(u)
        for lag in range(self.k):  # position t reads u_(t - lag), weighted by conv[:, k - 1 - lag]
            shifted = seq[:, self.k - 1 - lag:self.k - 1 - lag + T]
            if seq_docs is not None:
                shifted = shifted * (seq_docs[:, self.k - 1 - lag:self.k - 1 - lag + T] == docs).unsqueeze(-1)
            conv = conv + shifted * self.conv[:, self.k - 1 - lag].to(u.dtype)
        u = F.silu(conv)
        dt, b_in, c_out = self.x_proj(u).split((self.dt_rank, self.n_state, self.n_state), dim=-1)
        dt = F.softplus(self.dt_proj(dt)).float()
        a = -torch.exp(self.A_log.float())
        # the state carries over from t - 1 unless a new document starts at t
        keep = torch.ones(B, T, device=x.device) if docs is None else (docs == seq_docs[:, self.k - 2:-1]).float()
        ys = []
        uf, bf, cf = u.float(), b_in.float(), c_out.float()
        for t in range(T):
            h = torch.exp(dt[:, t, :, None] * a) * h * keep[:, t, None, None] \
                + dt[:, t, :, None] * bf[:, t, None, :] * uf[:, t, :, None]
            ys.append((h * cf[:, t, None, :]).sum(-1))
        y = torch.stack(ys, dim=1) + self.D.float() * uf
        ctx.keep(self, (seq[:, -(self.k - 1):] if self.k > 1 else seq[:, :0],
                        None if seq_docs is None else seq_docs[:, -(self.k - 1):], h))
        return self.out_proj((y * F.silu(z.float())).to(x.dtype))

    def extra_flops(self, context: int) -> dict[str, int]:
        """Training FLOPs per token of the scan, 3 x the forward's 9 x width x state (discretize, update and
        read out the state) + width (the D skip) + width (the z gate): the reference formula of VMamba's
        flops_selective_scan_fn; the counter of torch.utils.flop_counter sees only matmuls, so not these."""
        return {"scan": 3 * self.width * (9 * self.n_state + 2)}
