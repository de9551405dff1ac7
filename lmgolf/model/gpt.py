"""The GPT: token embedding, a stack of pre-norm blocks (a token mixer, attention or an SSM, then an MLP),
a final norm and a head. With every option off it is nanoGPT's model with RoPE and RMSNorm.

Options are fields of `ModelConfig`. Each is resolved when the model is built into a stage of the forward:
embedding features, the token mixer's query/key transforms, value mixing and output transforms
(lmgolf.model.attention), the block's residual mix and structure, taps on the residual stream between
blocks (U-Net skips, early exits) and the head. Module state for decoding lives in the cache, per-forward
state in the context (lmgolf.model.context); auxiliary outputs come back in a `ModelOutput`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from lmgolf.config import ModelConfig
from lmgolf.model.attention import Attention
from lmgolf.model.context import Context, ContextSpec, KVCache
from lmgolf.model.mlp import MLP, MoE
from lmgolf.model.neighbours import BigramHash, SmearGate
from lmgolf.model.norms import Norm, make_norm, normalize_embedding
from lmgolf.model.positions import LearnedPositions
from lmgolf.model.ssm import SelectiveSSM
from lmgolf.model.window import WindowPredictor

__all__ = ["GPT", "Block", "ModelOutput", "KVCache", "Attention", "MLP", "MoE"]  # what other packages import


class ModelOutput(NamedTuple):
    """What `GPT.forward(..., aux=True)` returns."""
    logits: torch.Tensor                   # (batch, time, vocab), float32
    aux_loss: torch.Tensor | None          # the weighted MoE load-balance loss (None without MoE)
    exit_logits: tuple[torch.Tensor, ...]  # the early exits' logits, shallowest first
    mean_depth: torch.Tensor | None        # inference with an exit threshold: the mean depth the tokens used
    expert_usage: torch.Tensor | None      # (MoE applications, experts): each expert's share of routed slots


class Block(nn.Module):
    """x + mixer(norm(x)), then x + mlp(norm(x)). The residual-mix stage (resid_mix) mixes other streams into
    the block's input; output scales and LN scale live in the branches and norms chosen at construction."""

    def __init__(self, cfg: ModelConfig, layer: int = 0):
        super().__init__()
        scale = 1 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0
        is_ssm = layer in cfg.ssm_blocks
        self.attn_norm = make_norm(cfg, scale)  # the token mixer's norm, attention or SSM
        self.attn = None if is_ssm else Attention(cfg, layer)
        self.ssm = SelectiveSSM(cfg) if is_ssm else None
        self.mlp_norm, self.mlp = make_norm(cfg, scale), (MoE(cfg) if cfg.moe_experts else MLP(cfg))
        self.attn_scale = nn.Parameter(torch.ones(cfg.d_model)) if cfg.output_scales else None
        self.mlp_scale = nn.Parameter(torch.ones(cfg.d_model)) if cfg.output_scales else None
        # resid_mix[0] weighs the residual stream, resid_mix[1] the embedding stream x0
        self.resid_mix = nn.Parameter(torch.stack((torch.ones(cfg.d_model), torch.zeros(cfg.d_model)))) if cfg.resid_mix else None
        self.input_mixes = [self.mix_embedding] if cfg.resid_mix else []
        mixer = self.attn if self.attn is not None else self.ssm
        self.branches = (self.scaled_mixer, self.scaled_mlp) if cfg.output_scales else (mixer, self.mlp)

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        mixer, mlp = self.branches
        for mix in self.input_mixes:
            x = mix(x, ctx)
        x = x + mixer(self.attn_norm(x), ctx)
        x = x + mlp(self.mlp_norm(x), ctx)
        return x

    @property
    def mixer(self) -> nn.Module:
        return self.attn if self.attn is not None else self.ssm

    def mix_embedding(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        mix = self.resid_mix.to(x.dtype)
        return mix[0] * x + mix[1] * ctx.x0

    def scaled_mixer(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        y = self.mixer(x, ctx)
        return y * self.attn_scale.to(y.dtype)

    def scaled_mlp(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        y = self.mlp(x, ctx)
        return y * self.mlp_scale.to(y.dtype)


class PostNormBlock(Block):
    """The original Transformer (`norm_position=post`): normalize after each residual addition."""

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        mixer, mlp = self.branches
        for mix in self.input_mixes:
            x = mix(x, ctx)
        x = self.attn_norm(x + mixer(x, ctx))
        return self.mlp_norm(x + mlp(x, ctx))


class ParallelBlock(Block):
    """Parallel residuals (`parallel_from`, GPT-J, PaLM): the mixer and the MLP read the same input."""

    def forward(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        mixer, mlp = self.branches
        for mix in self.input_mixes:
            x = mix(x, ctx)
        return x + mixer(self.attn_norm(x), ctx) + mlp(self.mlp_norm(x), ctx)


def make_block(cfg: ModelConfig, layer: int) -> Block:
    if cfg.norm_position == "post":
        return PostNormBlock(cfg, layer)
    if cfg.parallel_from is not None and layer >= cfg.parallel_from:
        return ParallelBlock(cfg, layer)
    return Block(cfg, layer)


class GPT(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        transformer = cfg.family == "transformer"
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.embed_rank or cfg.d_model)
        self.emb_proj = nn.Linear(cfg.embed_rank, cfg.d_model, bias=False) if cfg.embed_rank else None
        self.pos_emb = LearnedPositions(cfg.context, cfg.d_model) if cfg.positions == "learned" else None
        self.drop = nn.Dropout(cfg.dropout_rate("embed")) if cfg.dropout_rate("embed") else None
        self.bigram = BigramHash(cfg.bigram_buckets, cfg.bigram_dim, cfg.d_model, cfg.bos_id) if cfg.bigram_buckets else None
        self.smear = SmearGate(cfg.d_model, cfg.bos_id) if cfg.smear_gate else None
        self.blocks = nn.ModuleList(make_block(cfg, i) for i in range(cfg.n_layer if transformer else 0))
        self.window_net = None if transformer else WindowPredictor(cfg)
        self.order = cfg.layer_order if transformer else []  # depth steps -> blocks (recurrence reuses blocks)
        self.recurrence_on = True  # training turns it off until recur_start of the budget
        self.exit_depths = cfg.exit_depths
        self.n_encoder = len(self.order) // 2 if cfg.unet_skips else 0
        n_skips = min(self.n_encoder, len(self.order) - self.n_encoder)
        self.skip_weights = nn.Parameter(torch.ones(n_skips, cfg.d_model)) if cfg.unet_skips else None
        pre_norm = cfg.norm_position == "pre" and cfg.family != "linear"  # the linear family stays linear
        self.final_norm = Norm(cfg.d_model, cfg.norm, cfg.norm_gain, cfg.bias, cfg.norm_eps) if pre_norm else None
        self.head = None if cfg.tie_embeddings else nn.Linear(cfg.d_model, cfg.vocab_size, bias=False)
        self.reset_parameters()

        # the stages, as lists of what each option adds (plain lists: the modules are registered above)
        self.embedding_features = [f for f, on in (
            (self.project_embedding, cfg.embed_rank), (self.bigram, cfg.bigram_buckets), (self.smear, cfg.smear_gate),
            (self.pos_emb, self.pos_emb is not None), (normalize_embedding, cfg.embed_norm),
            (self.drop_embedding, self.drop is not None)) if on]
        self.steps = [self.blocks[b] for b in self.order] if transformer else [self.window_net]
        self.steps_once = list(self.blocks) if transformer else self.steps  # before depth recurrence switches on
        self.taps = [t for t, on in ((self.take_exit, self.exit_depths), (self.unet_skip, cfg.unet_skips)) if on]
        unembed = (self.untied_head if self.head is not None
                   else self.tied_factorized_head if self.emb_proj is not None else self.tied_head)
        self.head_stages = [s for s, on in ((self.final_norm, self.final_norm is not None), (unembed, True),
                                            (self.cap_logits, cfg.logit_softcap)) if on]
        self.context_spec = ContextSpec(
            bos_id=cfg.bos_id, doc_mask=cfg.doc_mask, documents=cfg.doc_mask or not transformer,
            attention=any(b.attn is not None for b in self.blocks))

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

    def forward(self, idx: torch.Tensor, cache: KVCache | None = None, aux: bool = False):
        """Logits (batch, time, vocab) in float32 for token ids (batch, time); with aux=True, a ModelOutput."""
        ctx = Context(idx, cache, self.context_spec)
        x = self.embed(idx, ctx)
        for step, block in enumerate(self.steps if self.recurrence_on else self.steps_once):
            for tap in self.taps:
                x = tap(step, x, ctx)
            x = block(x, ctx)
        ctx.close()
        out = self.outputs(self.output(x), ctx)
        return out if aux else out.logits

    def embed(self, idx: torch.Tensor, ctx: Context) -> torch.Tensor:
        x = self.tok_emb(idx)
        for feature in self.embedding_features:
            x = feature(x, ctx)
        ctx.x0 = x
        return x

    def drop_embedding(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Dropout on the embedding output (`dropout`, `embed_dropout`), in training only."""
        return self.drop(x)

    def project_embedding(self, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """Factorized embedding (`embed_rank`): the V x r table's rows projected to d_model."""
        return self.emb_proj(x)

    # taps on the residual stream before depth step `step`
    def take_exit(self, step: int, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        if step in self.exit_depths:
            ctx.exit_states.append(x)
        return x

    def unet_skip(self, step: int, x: torch.Tensor, ctx: Context) -> torch.Tensor:
        """U-Net skips: the outputs of the first n_encoder steps are pushed, and each later step's input adds
        the last one pushed, times a learned per-channel weight."""
        if 0 < step <= self.n_encoder:
            ctx.skips.append(x)
        if step >= self.n_encoder and ctx.skips:
            x = x + self.skip_weights[step - self.n_encoder].to(x.dtype) * ctx.skips.pop()
        return x

    # the head
    def output(self, x: torch.Tensor) -> torch.Tensor:
        """Final norm, head and soft-cap: float32 logits (the early exits share it)."""
        for stage in self.head_stages:
            x = stage(x)
        return x

    def tied_head(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.tok_emb.weight).float()

    def tied_factorized_head(self, x: torch.Tensor) -> torch.Tensor:
        """Back through the factorized embedding's projection, then its table."""
        return F.linear(x @ self.emb_proj.weight, self.tok_emb.weight).float()

    def untied_head(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(x).float()

    def cap_logits(self, logits: torch.Tensor) -> torch.Tensor:
        c = self.cfg.logit_softcap
        return c * torch.tanh(logits / c)

    def outputs(self, logits: torch.Tensor, ctx: Context) -> ModelOutput:
        exit_logits = tuple(self.output(h) for h in ctx.exit_states)
        mean_depth = None
        if exit_logits and not self.training and self.cfg.exit_threshold > 0:
            logits, mean_depth = self.early_exit(logits, exit_logits)
        aux_loss = self.cfg.moe_aux_weight * torch.stack(ctx.balance_losses).mean() if ctx.balance_losses else None
        usage = torch.stack(ctx.expert_usage) if ctx.expert_usage else None
        return ModelOutput(logits, aux_loss, exit_logits, mean_depth, usage)

    def early_exit(self, final: torch.Tensor, exits: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """Each token takes the logits of the first exit whose top probability reaches the threshold
        (else the last layer's); also returns the mean depth the tokens used."""
        depths = self.exit_depths[:len(exits)] + [len(self.order)]
        chosen = torch.full(final.shape[:-1], len(depths) - 1, device=final.device)
        for j in reversed(range(len(exits))):
            confident = exits[j].softmax(-1).amax(-1) >= self.cfg.exit_threshold
            chosen = torch.where(confident, j, chosen)
        stacked = torch.stack(exits + (final,))  # (exits + 1, batch, time, vocab)
        mean_depth = torch.tensor(depths, dtype=torch.float32, device=final.device)[chosen].mean()
        return stacked.gather(0, chosen[None, ..., None].expand(1, *final.shape))[0], mean_depth

    def extra_loss(self, out: ModelOutput, targets: torch.Tensor) -> torch.Tensor | float:
        """The weighted extra training losses of a forward's output: MoE load balance and the mean
        cross-entropy of the early exits; 0 when the model has neither."""
        total = 0.0
        if out.aux_loss is not None:
            total = total + out.aux_loss
        if out.exit_logits:
            ce = [F.cross_entropy(e.view(-1, e.size(-1)), targets.reshape(-1)) for e in out.exit_logits]
            total = total + self.cfg.exit_weight * torch.stack(ce).mean()
        return total

    def loss(self, idx: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        out = self(idx, aux=True)
        return F.cross_entropy(out.logits.view(-1, out.logits.size(-1)), targets.reshape(-1)) + self.extra_loss(out, targets)

    # FLOP accounting (lmgolf.model.count)
    def uses(self) -> list[nn.Module]:
        """The parts a token runs through, once per application: embedding features, then each depth
        step's block (depth recurrence reuses blocks) or the window network."""
        return [m for m in (self.emb_proj, self.bigram, self.smear) if m is not None] + self.steps

    def direct_matmul_weights(self) -> int:
        """The head's weights, for the final layer and each early exit; the tied head multiplies by the
        embedding table (and, factorized, by its projection)."""
        if self.head is not None:
            head = self.head.weight.numel()
        else:
            head = self.tok_emb.weight.numel() + (self.emb_proj.weight.numel() if self.emb_proj is not None else 0)
        return head * (1 + len(self.exit_depths))
