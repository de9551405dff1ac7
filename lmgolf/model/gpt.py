"""The GPT: token embedding, a stack of pre-norm blocks (attention then MLP), a final norm and a head.

Every option is a field of `ModelConfig`; read this file top to bottom as the architecture.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

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


class Rotary(nn.Module):
    """RoPE: rotate pairs (i, i + d/2) of the first d = `dims` dimensions of each head by
    position-dependent angles; the other head dimensions pass through (partial RoPE)."""

    def __init__(self, dims: int, base: float):
        super().__init__()
        self.dims = dims
        inv_freq = 1.0 / (base ** (torch.arange(0, dims, 2, dtype=torch.float32) / dims))
        self.register_buffer("inv_freq", inv_freq, persistent=False)

    def forward(self, x: torch.Tensor, start: int = 0) -> torch.Tensor:
        """x: (batch, heads, time, head_dim)."""
        t = torch.arange(start, start + x.size(-2), device=x.device, dtype=torch.float32)
        angles = torch.outer(t, self.inv_freq)
        cos, sin = angles.cos().to(x.dtype), angles.sin().to(x.dtype)
        rotated, rest = x[..., :self.dims], x[..., self.dims:]
        x1, x2 = rotated.chunk(2, dim=-1)
        return torch.cat((x1 * cos - x2 * sin, x1 * sin + x2 * cos, rest), dim=-1)


class KVCache:
    """Keys and values of the tokens seen so far, one slot per depth step, for incremental decoding.
    Slots are added as needed: depth recurrence runs more steps than the model has blocks."""

    def __init__(self, n_layer: int = 0):
        self.layers: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * n_layer
        self.length = 0
        self.docs: torch.Tensor | None = None  # document index of every cached position (doc_mask models)
        self.last_token: torch.Tensor | None = None  # (batch, 1): for BigramHash and SmearGate
        self.last_embed: torch.Tensor | None = None  # (batch, 1, d_model): SmearGate's previous input
        self.recent: tuple | None = None  # window models: the last window - 1 inputs and their documents

    def slot(self, layer: int):
        if layer >= len(self.layers):
            self.layers += [None] * (layer + 1 - len(self.layers))
        return self.layers[layer]

    def update(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        past = self.slot(layer)
        if past is not None:
            k, v = torch.cat((past[0], k), dim=2), torch.cat((past[1], v), dim=2)
        self.layers[layer] = (k, v)
        return k, v


def previous_tokens(idx: torch.Tensor, cache: "KVCache | None") -> tuple[torch.Tensor, torch.Tensor]:
    """Each position's previous token id, and whether it has one in the same document (a BOS token,
    the first position of a fresh sequence, and nothing else, start without one)."""
    before = cache.last_token if cache is not None and cache.last_token is not None else None
    first = before if before is not None else torch.zeros_like(idx[:, :1])
    prev = torch.cat((first, idx[:, :-1]), dim=1)
    has_prev = torch.ones_like(idx, dtype=torch.bool)
    if before is None:
        has_prev[:, 0] = False
    return prev, has_prev


class BigramHash(nn.Module):
    """An embedding of the hashed (previous, current) token pair, projected and added to the input."""

    def __init__(self, buckets: int, dim: int, d_model: int):
        super().__init__()
        self.buckets = buckets
        self.table = nn.Embedding(buckets, dim)
        self.proj = nn.Linear(dim, d_model, bias=False)

    def forward(self, idx: torch.Tensor, prev: torch.Tensor, has_prev: torch.Tensor) -> torch.Tensor:
        bucket = torch.bitwise_xor(36313 * idx, 27191 * prev) % self.buckets
        return self.proj(self.table(bucket)) * has_prev.unsqueeze(-1)


class SmearGate(nn.Module):
    """x_t <- (1 - g_t) x_t + g_t x_(t-1), with g_t = sigmoid(w . x_t + b) a learned per-token gate."""

    def __init__(self, d_model: int):
        super().__init__()
        self.gate = nn.Linear(d_model, 1)

    def forward(self, x: torch.Tensor, x_before: torch.Tensor | None, has_prev: torch.Tensor) -> torch.Tensor:
        first = x_before if x_before is not None else torch.zeros_like(x[:, :1])
        x_prev = torch.cat((first, x[:, :-1]), dim=1)
        g = torch.sigmoid(self.gate(x)) * has_prev.unsqueeze(-1)
        return x + g * (x_prev - x)


@dataclass
class Shared:
    """What the blocks of one forward pass share: the attention mask (None: plain causal) and the
    first layer's values (for value residuals)."""
    mask: torch.Tensor | None = None
    docs: torch.Tensor | None = None     # (batch, T) document index of each position, when doc_mask is on
    v_first: torch.Tensor | None = None


class Attention(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        self.n_head, self.n_kv, self.hd = cfg.n_head, cfg.kv_heads, cfg.head_size
        self.q = nn.Linear(cfg.d_model, self.n_head * self.hd, bias=cfg.bias)
        self.k = nn.Linear(cfg.d_model, self.n_kv * self.hd, bias=cfg.bias)
        self.v = nn.Linear(cfg.d_model, self.n_kv * self.hd, bias=cfg.bias)
        self.proj = nn.Linear(self.n_head * self.hd, cfg.d_model, bias=cfg.bias)
        self.qk_norm = cfg.qk_norm
        self.q_gain = nn.Parameter(torch.full((self.n_head,), cfg.q_gain)) if cfg.q_gain is not None else None
        nope_layer = cfg.nope_every and (layer + 1) % cfg.nope_every == 0
        use_rope = cfg.positions == "rope" and not nope_layer
        self.diff = cfg.diff_attn
        rope_dims = self.hd // 2 if self.diff else (cfg.rope_dims or self.hd)  # diff: each half is its own head
        self.rotary = Rotary(rope_dims, cfg.rope_base) if use_rope else None
        if self.diff:  # lambda = exp(lq1 . lk1) - exp(lq2 . lk2) + lambda_init, with lambda_init by depth
            self.lambda_init = 0.8 - 0.6 * math.exp(-0.3 * layer)
            self.lambdas = nn.Parameter(torch.randn(4, self.hd // 2) * 0.1)
        self.exclusive = cfg.exclusive_attn
        self.softcap = cfg.attn_softcap
        self.keeps_v_first = cfg.value_residual and layer == 0
        # value residuals (ResFormer): v <- lambda_0 v + lambda_1 v_first, learned, in every later layer
        self.v_mix = nn.Parameter(torch.tensor([0.5, 0.5])) if cfg.value_residual and layer > 0 else None
        gate_width = {"none": 0, "head": self.n_head, "element": self.n_head * self.hd}[cfg.attn_gate]
        self.gate = nn.Linear(cfg.d_model, gate_width, bias=True) if gate_width else None

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                shared: Shared | None = None) -> torch.Tensor:
        """shared.mask: an optional boolean (batch, 1, T, keys) matrix of allowed pairs (causality included)."""
        shared = shared or Shared()
        B, T, _ = x.shape
        q = self.q(x).view(B, T, self.n_head, self.hd).transpose(1, 2)
        k = self.k(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        v = self.v(x).view(B, T, self.n_kv, self.hd).transpose(1, 2)
        if self.qk_norm:
            q, k = F.rms_norm(q, (self.hd,)), F.rms_norm(k, (self.hd,))
        start = cache.length if cache is not None else 0
        if self.rotary is not None:
            q, k = self._rotate(q, start), self._rotate(k, start)
        if self.q_gain is not None:
            q = q * self.q_gain.to(q.dtype)[None, :, None, None]
        if self.keeps_v_first:
            shared.v_first = v
        elif self.v_mix is not None and shared.v_first is not None:
            mix = self.v_mix.to(v.dtype)
            v = mix[0] * v + mix[1] * shared.v_first
        if cache is not None:
            k, v = cache.update(layer, k, v)
        if self.n_kv != self.n_head:  # GQA/MQA: each key/value head serves n_head / n_kv query heads
            k = k.repeat_interleave(self.n_head // self.n_kv, dim=1)
            v = v.repeat_interleave(self.n_head // self.n_kv, dim=1)
        mask = shared.mask
        if mask is None and start > 0:  # new queries sit at positions start..start+T-1 and see every earlier key
            mask = torch.ones(T, k.size(2), dtype=torch.bool, device=x.device).tril(diagonal=start)
        y = self.differential(q, k, v, mask) if self.diff else self.attend(q, k, v, mask)
        if self.exclusive:  # exclusive self-attention: keep only what is orthogonal to the token's own value
            own = v[:, :, -T:]
            y = y - (y * own).sum(-1, keepdim=True) / own.square().sum(-1, keepdim=True).clamp_min(1e-6) * own
        if self.gate is not None:  # gated attention: per head, or per channel of each head
            g = torch.sigmoid(self.gate(x)).view(B, T, self.n_head, -1).transpose(1, 2)
            y = y * g.to(y.dtype)
        return self.proj(y.transpose(1, 2).reshape(B, T, self.n_head * self.hd))

    def _rotate(self, x: torch.Tensor, start: int) -> torch.Tensor:
        if not self.diff:
            return self.rotary(x, start)
        half = self.hd // 2
        return torch.cat((self.rotary(x[..., :half], start), self.rotary(x[..., half:], start)), dim=-1)

    def differential(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """(softmax(q1 k1^T) - lambda softmax(q2 k2^T)) v, per-head RMS-normalized, times (1 - lambda_init)."""
        half = self.hd // 2
        lq1, lk1, lq2, lk2 = self.lambdas.float()
        lam = torch.exp((lq1 * lk1).sum()) - torch.exp((lq2 * lk2).sum()) + self.lambda_init
        y1 = self.attend(q[..., :half], k[..., :half], v, mask)
        y2 = self.attend(q[..., half:], k[..., half:], v, mask)
        y = y1 - lam.to(y1.dtype) * y2
        return F.rms_norm(y, (self.hd,)) * (1 - self.lambda_init)

    def attend(self, q, k, v, mask: torch.Tensor | None) -> torch.Tensor:
        """softmax(q k^T / sqrt(d)) v over the allowed keys (plain causal when mask is None)."""
        if self.softcap is None:
            if mask is None:
                return F.scaled_dot_product_attention(q, k, v, is_causal=True)
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
        scores = q @ k.transpose(-2, -1) / math.sqrt(q.size(-1))
        scores = self.softcap * torch.tanh(scores / self.softcap)
        if mask is None:
            mask = torch.ones(q.size(2), k.size(2), dtype=torch.bool, device=q.device).tril()
        return scores.masked_fill(~mask, float("-inf")).softmax(-1).to(v.dtype) @ v


class SelectiveSSM(nn.Module):
    """A Mamba-style selective state space mixer (Gu and Dao 2023) in plain PyTorch:
    in-projection to a signal u and a gate z; a causal depthwise convolution and SiLU on u; input-
    dependent step dt, input matrix B and output matrix C; the scan h_t = exp(dt_t A) h_(t-1) + dt_t B_t u_t,
    y_t = C_t h_t + D u_t; then y * SiLU(z) and an out-projection. With document masking the state is
    reset at a BOS and the convolution does not reach into the previous document."""

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

    def forward(self, x: torch.Tensor, cache: KVCache | None = None, layer: int = 0,
                shared: Shared | None = None) -> torch.Tensor:
        B, T, _ = x.shape
        u, z = self.in_proj(x).chunk(2, dim=-1)
        docs = shared.docs if shared is not None else None
        past = cache.slot(layer) if cache is not None else None
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
        if cache is not None:
            cache.layers[layer] = (seq[:, -(self.k - 1):] if self.k > 1 else seq[:, :0],
                                   None if seq_docs is None else seq_docs[:, -(self.k - 1):], h)
        return self.out_proj((y * F.silu(z.float())).to(x.dtype))


class MLP(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.kind, self.slope = cfg.mlp, cfg.leaky_slope
        self.up = nn.Linear(cfg.d_model, cfg.hidden, bias=cfg.bias)
        self.gate = nn.Linear(cfg.d_model, cfg.hidden, bias=cfg.bias) if cfg.mlp == "swiglu" else None
        self.proj = nn.Linear(cfg.hidden, cfg.d_model, bias=cfg.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "swiglu":
            h = F.silu(self.gate(x)) * self.up(x)
        elif self.kind == "relu2":
            h = F.relu(self.up(x)).square()
        elif self.kind == "leaky_relu2":
            h = F.leaky_relu(self.up(x), self.slope).square()
        else:
            h = F.gelu(self.up(x))
        return self.proj(h)


class MoE(nn.Module):
    """Mixture of experts: a router picks each token's top-k experts (MLPs) and mixes their outputs
    with the renormalized router probabilities. Every token is processed (no capacity, no dropping),
    so the layer stays causal. `aux_loss` is the Switch Transformer load-balance loss of the last
    forward pass and `usage` the share of routed slots each expert got."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.top_k = cfg.moe_top_k
        self.router = nn.Linear(cfg.d_model, cfg.moe_experts, bias=False)
        self.experts = nn.ModuleList(MLP(cfg) for _ in range(cfg.moe_experts))
        self.aux_loss = torch.zeros(())
        self.usage = torch.zeros(cfg.moe_experts)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = x.reshape(-1, x.size(-1))
        probs = self.router(flat).float().softmax(-1)
        weights, chosen = probs.topk(self.top_k, dim=-1)
        weights = weights / weights.sum(-1, keepdim=True)
        out = torch.zeros_like(flat)
        for e, expert in enumerate(self.experts):
            token, slot = (chosen == e).nonzero(as_tuple=True)
            if token.numel():
                out.index_add_(0, token, expert(flat[token]) * weights[token, slot, None].to(flat.dtype))
        routed = torch.zeros_like(probs).scatter_(1, chosen, 1.0).mean(0) / self.top_k  # share of slots
        self.aux_loss = len(self.experts) * (routed * probs.mean(0)).sum()
        self.usage = routed.detach()
        return out.view_as(x)


class WindowPredictor(nn.Module):
    """The window models of the small-model ladder: the embeddings of the last `window` tokens,
    concatenated (zeros before the sequence or the document starts), through one linear map (`linear`)
    or a one-hidden-layer MLP (`mlp`) back to d_model."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.window, width = cfg.window, cfg.window * cfg.d_model
        self.up = nn.Linear(width, cfg.hidden if cfg.family == "mlp" else cfg.d_model, bias=cfg.bias)
        self.proj = nn.Linear(cfg.hidden, cfg.d_model, bias=cfg.bias) if cfg.family == "mlp" else None

    def forward(self, x: torch.Tensor, docs: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """docs: (batch, T) document index of each position."""
        B, T, d = x.shape
        k = self.window - 1
        past = cache.recent if cache is not None else None
        before, before_docs = past if past is not None else (x.new_zeros(B, k, d), docs.new_full((B, k), -1))
        seq, seq_docs = torch.cat((before.to(x.dtype), x), dim=1), torch.cat((before_docs, docs), dim=1)
        parts = [seq[:, k - lag:k - lag + T] * (seq_docs[:, k - lag:k - lag + T] == docs).unsqueeze(-1)
                 for lag in range(self.window)]  # the token `lag` steps back, or zeros across a start
        if cache is not None:
            cache.recent = (seq[:, seq.size(1) - k:], seq_docs[:, seq.size(1) - k:])
        h = self.up(torch.cat(parts, dim=-1))
        return self.proj(F.gelu(h)) if self.proj is not None else h


class Block(nn.Module):
    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        norm = lambda: Norm(cfg.d_model, cfg.norm, cfg.norm_gain, cfg.bias, cfg.norm_eps)  # noqa: E731
        is_ssm = layer in cfg.ssm_blocks
        self.attn_norm = norm()  # the token mixer's norm, attention or SSM
        self.attn = None if is_ssm else Attention(cfg, layer)
        self.ssm = SelectiveSSM(cfg) if is_ssm else None
        self.mlp_norm, self.mlp = norm(), (MoE(cfg) if cfg.moe_experts else MLP(cfg))
        self.post_norm = cfg.norm_position == "post"
        self.parallel = cfg.parallel_from is not None and layer >= cfg.parallel_from
        self.norm_scale = 1 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        self.attn_scale = nn.Parameter(torch.ones(cfg.d_model)) if cfg.output_scales else None
        self.mlp_scale = nn.Parameter(torch.ones(cfg.d_model)) if cfg.output_scales else None
        # resid_mix[0] weighs the residual stream, resid_mix[1] the embedding stream x0
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(cfg.d_model), torch.zeros(cfg.d_model)))) if cfg.resid_mix else None

    def forward(self, x, x0, cache: KVCache | None = None, layer: int = 0, shared: Shared | None = None):
        if self.resid_mix is not None:
            mix = self.resid_mix.to(x.dtype)
            x = mix[0] * x + mix[1] * x0
        if self.post_norm:  # the original Transformer: normalize after each residual addition
            x = self._norm(self.attn_norm, x + self._scaled(self.mixer(x, cache, layer, shared), self.attn_scale))
            return self._norm(self.mlp_norm, x + self._scaled(self.mlp(x), self.mlp_scale))
        a = self._scaled(self.mixer(self._norm(self.attn_norm, x), cache, layer, shared), self.attn_scale)
        if self.parallel:  # attention and MLP read the same input (GPT-J, PaLM)
            return x + a + self._scaled(self.mlp(self._norm(self.mlp_norm, x)), self.mlp_scale)
        x = x + a
        return x + self._scaled(self.mlp(self._norm(self.mlp_norm, x)), self.mlp_scale)

    @property
    def mixer(self) -> nn.Module:
        return self.attn if self.attn is not None else self.ssm

    def _norm(self, norm: Norm, x: torch.Tensor) -> torch.Tensor:
        return norm(x) * self.norm_scale if self.norm_scale != 1.0 else norm(x)

    @staticmethod
    def _scaled(y: torch.Tensor, scale: nn.Parameter | None) -> torch.Tensor:
        return y * scale.to(y.dtype) if scale is not None else y


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.embed_rank or cfg.d_model)
        self.emb_proj = nn.Linear(cfg.embed_rank, cfg.d_model, bias=False) if cfg.embed_rank else None
        self.pos_emb = nn.Embedding(cfg.context, cfg.d_model) if cfg.positions == "learned" else None
        self.bigram = BigramHash(cfg.bigram_buckets, cfg.bigram_dim, cfg.d_model) if cfg.bigram_buckets else None
        self.smear = SmearGate(cfg.d_model) if cfg.smear_gate else None
        transformer = cfg.family == "transformer"
        self.blocks = nn.ModuleList(Block(cfg, i) for i in range(cfg.n_layer if transformer else 0))
        self.window_net = None if transformer else WindowPredictor(cfg)
        self.order = cfg.layer_order if transformer else []  # depth steps -> blocks (recurrence reuses blocks)
        self.recurrence_on = True  # training turns it off until recur_start of the budget
        self.exit_depths = cfg.exit_depths
        self.exit_logits: list[torch.Tensor] = []
        self.avg_depth: float | None = None
        self.n_encoder = len(self.order) // 2 if cfg.unet_skips else 0
        n_skips = min(self.n_encoder, len(self.order) - self.n_encoder)
        self.skip_weights = nn.Parameter(torch.ones(n_skips, cfg.d_model)) if cfg.unet_skips else None
        pre_norm = cfg.norm_position == "pre" and cfg.family != "linear"  # the linear family stays linear
        self.final_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_gain, cfg.bias, cfg.norm_eps) if pre_norm else None
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        cfg = self.cfg
        proj_std = cfg.init_std / math.sqrt(2 * cfg.n_layer)
        for name, module in self.named_modules():
            if isinstance(module, nn.Linear):
                is_proj = name.endswith(".proj")
                if is_proj and cfg.zero_init_proj:
                    nn.init.zeros_(module.weight)
                else:
                    nn.init.normal_(module.weight, std=proj_std if is_proj else cfg.init_std)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        if self.smear is not None:  # start close to the identity: the gate opens as it learns
            nn.init.zeros_(self.smear.gate.weight)
            nn.init.constant_(self.smear.gate.bias, -3.0)
        nn.init.normal_(self.tok_emb.weight, std=cfg.embed_init_std)
        if self.pos_emb is not None:
            nn.init.normal_(self.pos_emb.weight, std=cfg.embed_init_std)

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None) -> torch.Tensor:
        """Logits (batch, time, vocab) in float32 for token ids (batch, time)."""
        start = cache.length if cache is not None else 0
        x = self.tok_emb(idx)
        if self.emb_proj is not None:
            x = self.emb_proj(x)
        if self.bigram is not None or self.smear is not None:
            x = self.mix_neighbours(idx, x, cache)
        if self.pos_emb is not None:
            if start + idx.size(1) > self.cfg.context:
                raise ValueError(f"sequence of {start + idx.size(1)} tokens exceeds the learned context {self.cfg.context}")
            x = x + self.pos_emb(torch.arange(start, start + idx.size(1), device=idx.device))
        if self.cfg.embed_norm:
            x = F.rms_norm(x, (x.size(-1),))
        x0 = x
        shared = Shared(*self.document_mask(idx, cache)) if self.cfg.doc_mask else Shared()
        if self.window_net is not None:
            x = self.window_net(x, shared.docs if shared.docs is not None else self.document_ids(idx, cache), cache)
        skips, exits = [], []
        order = self.order if self.recurrence_on else range(len(self.blocks))
        for i, b in enumerate(order):  # i: depth step (its own cache slot), b: the block applied
            if self.skip_weights is not None and i >= self.n_encoder and skips:
                x = x + self.skip_weights[i - self.n_encoder].to(x.dtype) * skips.pop()
            x = self.blocks[b](x, x0, cache, i, shared)
            if i < self.n_encoder:
                skips.append(x)
            if i + 1 in self.exit_depths:
                exits.append(x)
        if cache is not None:
            cache.length += idx.size(1)
        logits = self.output(x)
        self.exit_logits = [self.output(h) for h in exits]
        if self.exit_logits and not self.training and self.cfg.exit_threshold > 0:
            logits = self.early_exit(logits)
        return logits

    def output(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, head and soft-cap: float32 logits."""
        if self.final_norm is not None:
            x = self.final_norm(x)
        if self.head is not None:
            logits = self.head(x)
        elif self.emb_proj is not None:  # the tied factorized head: back through the projection, then the table
            logits = F.linear(x @ self.emb_proj.weight, self.tok_emb.weight)
        else:
            logits = F.linear(x, self.tok_emb.weight)
        logits = logits.float()
        if self.cfg.logit_softcap:
            c = self.cfg.logit_softcap
            logits = c * torch.tanh(logits / c)
        return logits

    def early_exit(self, final: torch.Tensor) -> torch.Tensor:
        """Each token takes the logits of the first exit whose top probability reaches the threshold
        (else the last layer's); `avg_depth` records the mean depth the tokens used."""
        depths = self.exit_depths + [len(self.order)]
        chosen = torch.full(final.shape[:-1], len(depths) - 1, device=final.device)
        for j in reversed(range(len(self.exit_logits))):
            confident = self.exit_logits[j].softmax(-1).amax(-1) >= self.cfg.exit_threshold
            chosen = torch.where(confident, j, chosen)
        stacked = torch.stack(self.exit_logits + [final])  # (exits + 1, batch, time, vocab)
        self.avg_depth = float(torch.tensor(depths, dtype=torch.float32, device=final.device)[chosen].mean())
        return stacked.gather(0, chosen[None, ..., None].expand(1, *final.shape))[0]

    def mix_neighbours(self, idx: torch.Tensor, x: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """BigramHash and SmearGate: inputs that read the previous token, never across a BOS."""
        if self.cfg.bos_id is None:
            raise ValueError("model.bigram_buckets and model.smear_gate need model.bos_id (training sets it)")
        prev, has_prev = previous_tokens(idx, cache)
        has_prev = has_prev & (idx != self.cfg.bos_id)
        if self.bigram is not None:
            x = x + self.bigram(idx, prev, has_prev).to(x.dtype)
        if self.smear is not None:
            before = cache.last_embed if cache is not None else None
            if cache is not None:
                cache.last_embed = x[:, -1:]
            x = self.smear(x, before, has_prev)
        if cache is not None:
            cache.last_token = idx[:, -1:]
        return x

    def document_ids(self, idx: torch.Tensor, cache: KVCache | None) -> torch.Tensor:
        """Document index of each position (all 0 when the BOS id is unknown); window models never read
        across a document start."""
        return torch.zeros_like(idx) if self.cfg.bos_id is None else self.document_mask(idx, cache)[1]

    def document_mask(self, idx: torch.Tensor, cache: KVCache | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Allowed (query, key) pairs (the key is not later and lies in the same document; a BOS token
        opens a new document) and the document index of each new position."""
        if self.cfg.bos_id is None:
            raise ValueError("model.doc_mask needs model.bos_id (training sets it from the data folder)")
        docs = torch.cumsum(idx == self.cfg.bos_id, dim=1)
        past = cache.docs if cache is not None and cache.docs is not None else None
        if past is not None:
            docs = docs + past[:, -1:]
        keys = docs if past is None else torch.cat((past, docs), dim=1)
        if cache is not None:
            cache.docs = keys
        start = keys.size(1) - idx.size(1)
        q_pos = torch.arange(start, keys.size(1), device=idx.device)
        k_pos = torch.arange(keys.size(1), device=idx.device)
        causal = k_pos[None, :] <= q_pos[:, None]
        return (causal[None] & (docs[:, :, None] == keys[:, None, :]))[:, None], docs

    def extra_loss(self, targets: torch.Tensor) -> torch.Tensor | float:
        """The weighted extra training losses of the last forward pass: MoE load balance and the mean
        cross-entropy of the early exits; 0 when the model has neither."""
        total = 0.0
        moe = [m.aux_loss for m in self.modules() if isinstance(m, MoE)]
        if moe:
            total = total + self.cfg.moe_aux_weight * torch.stack(moe).mean()
        if self.exit_logits:
            ce = [F.cross_entropy(e.view(-1, e.size(-1)), targets.reshape(-1)) for e in self.exit_logits]
            total = total + self.cfg.exit_weight * torch.stack(ce).mean()
        return total

    def expert_usage(self) -> list[list[float]]:
        """Per MoE layer, the share of routed slots each expert took in the last forward pass."""
        return [[round(u, 4) for u in m.usage.tolist()] for m in self.modules() if isinstance(m, MoE)]

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        logits = self(idx)
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1)) + self.extra_loss(targets)
