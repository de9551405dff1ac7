"""Causal self-attention (MHA, GQA or MQA) and its options, in named stages: query/key transforms
(QK-norm, RoPE, query gain), value mixing (value residuals), the core (fused SDPA or batched matmuls,
soft-capped scores or differential attention) and output transforms (exclusive attention, the output gate).

The core's kernel (model.attn_kernel): PyTorch's fused kernel, or the scores and probabilities written out by
batched matmuls. On a CPU in bf16 the fused kernel is slow at short contexts (its backward runs at fp32 speed,
and at 64 keys it takes 6x as long as the matmuls), so `auto` takes the matmuls there up to MATMUL_MAX_KEYS keys
(measured in docs/benchmarks.md, "Attention's kernel on a CPU"); the maps they hold for the backward pass,
queries x keys per head, stay small at such lengths."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from lmgolf.config import ModelConfig
from lmgolf.model.context import Context, attention_mask
from lmgolf.model.positions import Rotary

MATMUL_MAX_KEYS = 512  # bf16 on a CPU: the matmuls beat the fused kernel up to here, not at 1,024 (AVX512-BF16)


def matmuls_are_faster(q: torch.Tensor, k: torch.Tensor) -> bool:
    """model.attn_kernel=auto: batched matmuls rather than the fused kernel, for bf16 on a CPU at short lengths."""
    return q.device.type == "cpu" and q.dtype == torch.bfloat16 and k.size(-2) <= MATMUL_MAX_KEYS


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_size
        self.q = nn.Linear(cfg.d_model, self.n_head * self.hd, bias=cfg.bias)
        self.k = nn.Linear(cfg.d_model, self.n_kv * self.hd, bias=cfg.bias)
        self.v = nn.Linear(cfg.d_model, self.n_kv * self.hd, bias=cfg.bias)
        self.proj = nn.Linear(self.n_head * self.hd, cfg.d_model, bias=cfg.bias)
        self.attn_dropout = cfg.dropout_rate("attn")  # on the attention probabilities, in training only
        self.resid_dropout = nn.Dropout(cfg.dropout_rate("resid")) if cfg.dropout_rate("resid") else nn.Identity()
        self.q_gain = nn.Parameter(torch.full((self.n_head,), cfg.q_gain)) if cfg.q_gain is not None else None
        nope_layer = cfg.nope_every and (layer + 1) % cfg.nope_every == 0
        use_rope = cfg.positions == "rope" and not nope_layer
        self.diff = cfg.diff_attn
        rope_dims = self.hd // 2 if self.diff else (cfg.rope_dims or self.hd)  # diff: each half is its own head
        self.rotary = Rotary(rope_dims, cfg.rope_base) if use_rope else None
        if self.diff:  # lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init, with lambda_init by depth
            self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer)
            self.lambdas = nn.Parameter(torch.randn(4, self.hd // 2) * 0.1)
        self.softcap = cfg.attn_softcap
        self.kernel = cfg.attn_kernel
        # value residuals (ResFormer): v <- lambda_0 v + lambda_1 v_first, learned, in every later layer
        self.v_mix = nn.Parameter(torch.tensor([0.5, 0.5])) if cfg.value_residual and layer > 0 else None
        gate_width = {"none": 0, "head": self.n_head, "element": self.n_head * self.hd}[cfg.attn_gate]
        self.gate = nn.Linear(cfg.d_model, gate_width, bias=True) if gate_width else None

        self.qk_transforms = [t for t, on in ((self.normalize_qk, cfg.qk_norm), (self.rotate_qk, use_rope),
                                              (self.gain_q, cfg.q_gain is not None)) if on]
        self.value_mixes = [m for m, on in ((self.keep_first_values, cfg.value_residual and layer == 0),
                                            (self.mix_first_values, self.v_mix is not None)) if on]
        self.attend = self.explicit if self.softcap is not None else self.sdpa
        self.core = self.differential if self.diff else self.attend
        self.output_transforms = [t for t, on in ((self.exclude_own_value, cfg.exclusive_attn),
                                                  (self.apply_gate, self.gate is not None)) if on]

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        for transform in self.qk_transforms:
            q, k = transform(q, k, ctx)
        for mix in self.value_mixes:
            v = mix(v, ctx)
        k, v = self.with_cached(k, v, ctx)
        if self.n_kv != self.n_head:  # GQA/MQA: each key/value head serves n_head / n_kv query heads
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        y = self.core(q, k, v, ctx.mask)
        for transform in self.output_transforms:
            y = transform(y, x, v)
        return self.resid_dropout(self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd)))

    def with_cached(self, k: torch.Tensor, v: torch.Tensor, ctx: Context) -> tuple[torch.Tensor, torch.Tensor]:
        """The keys and values of every token so far: the cached ones, then these (kept for the next call)."""
        past = ctx.recall(self)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        ctx.keep(self, (k, v), time_axis=2)
        return k, v

    # query/key transforms
    def normalize_qk(self, q, k, ctx: Context):
        """QK-norm: gain-free RMSNorm of each head's queries and keys."""
        return F.rms_norm(q, (self.hd,)), F.rms_norm(k, (self.hd,))

    def rotate_qk(self, q, k, ctx: Context):
        at = ctx.start if ctx.positions is None else ctx.positions
        return self._rotate(q, at), self._rotate(k, at)

    def _rotate(self, x: torch.Tensor, start: int | torch.Tensor) -> torch.Tensor:
        if not self.diff:
            return self.rotary(x, start)
        half = self.hd // 2
        return torch.cat((self.rotary(x[..., :half], start), self.rotary(x[..., half:], start)), dim=-1)

    def gain_q(self, q, k, ctx: Context):
        """The learned per-head query gain (with QK-norm it sets the softmax temperature)."""
        return q * self.q_gain.to(q.dtype)[None, :, None, None], k

    # value mixing
    def keep_first_values(self, v, ctx: Context):
        ctx.v_first = v
        return v

    def mix_first_values(self, v, ctx: Context):
        if ctx.v_first is None:  # run on its own, without the first layer
            return v
        mix = self.v_mix.to(v.dtype)
        return mix[0] * v + mix[1] * ctx.v_first

    # the core
    def sdpa(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v over the allowed keys (plain causal when mask is None), by the fused
        kernel, or by batched matmuls where model.attn_kernel asks for them."""
        if self.kernel == "matmul" or (self.kernel == "auto" and matmuls_are_faster(q, k)):
            return self.explicit(q, k, v, mask)
        p = self.attn_dropout if self.training else 0.0
        if mask is None:
            return F.scaled_dot_product_attention(q, k, v, is_causal=True, dropout_p=p)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)

    def explicit(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d) + bias) v by batched matmuls, the bias 0 on allowed keys and -inf on the rest;
        with model.attn_softcap the scores are soft-capped first (Gemma 2): c tanh(s / c)."""
        B, H, T, d = q.shape
        S = k.size(2)
        allowed = mask if mask is not None else attention_mask(T, S - T, q.device)
        bias = torch.zeros(allowed.shape, dtype=q.dtype, device=q.device).masked_fill_(~allowed, float("-inf"))
        bias = bias.expand(B, H, T, S).reshape(B * H, T, S)  # a view where the mask is shared by the batch
        q, k_t = q.reshape(B * H, T, d), k.reshape(B * H, S, d).transpose(1, 2)
        if self.softcap is None:
            scores = torch.baddbmm(bias, q, k_t, alpha=1 / math.sqrt(d))  # the bias added inside the matmul
        else:
            scores = torch.bmm(q, k_t) / math.sqrt(d)
            scores = self.softcap * torch.tanh(scores / self.softcap) + bias
        probs = scores.softmax(-1)
        if self.attn_dropout and self.training:
            probs = F.dropout(probs, self.attn_dropout)
        dv = v.size(-1)  # differential attention's halves: q and k half as wide as v
        return torch.bmm(probs.to(v.dtype), v.reshape(B * H, S, dv)).view(B, H, T, dv)

    def differential(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """(softmax(q1 k1^T) - lambda softmax(q2 k2^T)) v, per-head RMS-normalized, times (1 - lambda_init)."""
        half = self.hd // 2
        lq1, lk1, lq2, lk2 = self.lambdas.float()
        lam = torch.exp((lq1 * lk1).sum()) - torch.exp((lq2 * lk2).sum()) + self.lambda_init
        y1 = self.attend(q[..., :half], k[..., :half], v, mask)
        y2 = self.attend(q[..., half:], k[..., half:], v, mask)
        y = y1 - lam.to(y1.dtype) * y2
        return F.rms_norm(y, (self.hd,)) * (1 - self.lambda_init)

    # output transforms
    def exclude_own_value(self, y, x, v):
        """Exclusive self-attention: keep only what is orthogonal to the token's own value."""
        own = v[:, :, -y.size(2):]
        return y - (y * own).sum(-1, keepdim=True) / own.square().sum(-1, keepdim=True).clamp_min(1e-6) * own

    def apply_gate(self, y, x, v):
        """Gated attention: the output times sigmoid(linear(x)), per head or per channel of each head."""
        B, T, _ = x.shape
        g = torch.sigmoid(self.gate(x)).view(B, T, self.n_head, -1).transpose(1, 2)
        return y * g.to(y.dtype)

    def extra_flops(self, context: int) -> dict[str, int]:
        """Training FLOPs per token besides the weights: QK^T and AV, 2 x context x width each forward;
        differential attention runs QK^T on two half-width maps and AV twice: 3 such products."""
        return {"attention": 6 * (3 if self.diff else 2) * self.n_head * self.hd * context}
