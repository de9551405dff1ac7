"""Cross-field checks of the config sections; each raises LmgolfError naming the fields."""

from __future__ import annotations

import dataclasses
import math

from lmgolf.codecs import CODECS, OPTIONAL_CODECS, missing_codec_message
from lmgolf.errors import LmgolfError
from lmgolf.params import GROUPS
from lmgolf.quantize import CLIP_RULES, STORAGES

MAX_LAYERS = 1024      # blocks in one model
MAX_PARAMS = 1 << 32   # parameters (16 GiB as float32), by the lower bound `min_params`


def _finite(cfg, section: str) -> None:
    for f in dataclasses.fields(cfg):
        v = getattr(cfg, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise LmgolfError(f"config field {section}.{f.name}: must be a finite number, got {v}")


def min_params(cfg) -> int:
    """A lower bound on a ModelConfig's parameter count from its fields alone, without building a model."""
    d, e = cfg.d_model, cfg.embed_rank or cfg.d_model
    n = cfg.vocab_size * (e + d * (not cfg.tie_embeddings)) + cfg.bigram_buckets * cfg.bigram_dim
    n += cfg.context * d * (cfg.positions == "learned")
    if cfg.family != "transformer":
        return n + cfg.window * d * d
    n_ssm = cfg.n_layer if cfg.ssm_layers.strip() == "all" else len(cfg.ssm_blocks)
    mlp = d * cfg.hidden * (3 if cfg.mlp == "swiglu" else 2) * max(1, cfg.moe_experts)
    attn = d * cfg.head_size * 2 * (cfg.n_head + cfg.kv_heads)
    return n + cfg.n_layer * mlp + (cfg.n_layer - n_ssm) * attn + n_ssm * 2 * d * d * cfg.ssm_expand


def check_model(cfg) -> None:
    """A ModelConfig's fields and their combinations."""
    choices = {"family": ("transformer", "linear", "mlp"), "positions": ("rope", "learned", "none"), "norm": ("rmsnorm", "layernorm"),
               "norm_position": ("pre", "post"), "attn_gate": ("none", "head", "element"),
               "attn_kernel": ("auto", "fused", "matmul"), "mlp": ("gelu", "swiglu", "relu2", "leaky_relu2")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise LmgolfError(f"config field model.{name}: {getattr(cfg, name)!r} is not one of {', '.join(allowed)}")
    _finite(cfg, "model")
    for name in ("vocab_size", "n_layer", "d_model", "n_head", "context"):
        if getattr(cfg, name) < 1:
            raise LmgolfError(f"config field model.{name}: must be >= 1")
    for name in ("n_kv_head", "head_dim", "mlp_hidden", "mlp_mult", "moe_experts", "window", "bigram_dim", "ssm_expand"):
        if (getattr(cfg, name) or 0) < 0:
            raise LmgolfError(f"config field model.{name}: must be >= 0")
    n = min_params(cfg)
    if n > MAX_PARAMS:
        raise LmgolfError(f"config fields model.vocab_size={cfg.vocab_size}, n_layer={cfg.n_layer}, d_model={cfg.d_model}: "
                          f"at least {n:,} parameters, {4 * n / 2**30:,.1f} GiB as float32, over the limit of {MAX_PARAMS:,}")
    if cfg.n_layer > MAX_LAYERS:
        raise LmgolfError(f"config field model.n_layer: {cfg.n_layer} blocks, over the limit of {MAX_LAYERS}")
    if cfg.head_dim is None and cfg.d_model % cfg.n_head:
        raise LmgolfError(f"config fields model.d_model and model.n_head: {cfg.d_model} is not divisible by {cfg.n_head}")
    if cfg.n_head % cfg.kv_heads:
        raise LmgolfError(f"config fields model.n_head and model.n_kv_head: {cfg.n_head} heads cannot be grouped into {cfg.kv_heads}")
    if cfg.positions == "rope" and cfg.head_size % 2:
        raise LmgolfError("config fields model.positions and model.head_dim: RoPE needs an even head size")
    if cfg.rope_dims is not None and not (0 < cfg.rope_dims <= cfg.head_size and cfg.rope_dims % 2 == 0):
        raise LmgolfError(f"config fields model.rope_dims and model.head_dim: rope_dims must be even and in "
                          f"(0, {cfg.head_size}], got {cfg.rope_dims}")
    if (cfg.rope_dims is not None or cfg.nope_every) and cfg.positions != "rope":
        raise LmgolfError("config fields model.rope_dims/model.nope_every and model.positions: they need positions=rope")
    if cfg.parallel_from is not None and not 0 <= cfg.parallel_from < cfg.n_layer:
        raise LmgolfError(f"config fields model.parallel_from and model.n_layer: {cfg.parallel_from} is not a layer index")
    if cfg.parallel_from is not None and cfg.norm_position == "post":
        raise LmgolfError("config fields model.parallel_from and model.norm_position: parallel blocks are pre-norm")
    if (cfg.bigram_buckets or cfg.smear_gate or cfg.doc_mask) and cfg.bos_id is not None \
            and not 0 <= cfg.bos_id < cfg.vocab_size:
        raise LmgolfError(f"config fields model.bos_id and model.vocab_size: {cfg.bos_id} is not a token id")
    if cfg.bigram_buckets < 0 or cfg.bigram_dim < 1:
        raise LmgolfError("config fields model.bigram_buckets and model.bigram_dim: must be >= 0 and >= 1")
    if cfg.attn_softcap is not None and cfg.attn_softcap <= 0:
        raise LmgolfError("config field model.attn_softcap: must be > 0 (or null for none)")
    order = cfg.layer_order
    if any(not 0 <= i < cfg.n_layer for i in order) or set(order) != set(range(cfg.n_layer)):
        raise LmgolfError(f"config fields model.depth_pattern and model.n_layer: the pattern must use every block "
                          f"0..{cfg.n_layer - 1} and no other, got {cfg.depth_pattern!r}")
    if cfg.embed_rank is not None and not 0 < cfg.embed_rank:
        raise LmgolfError("config field model.embed_rank: must be > 0 (or null for a full table)")
    if cfg.moe_experts and not 1 <= cfg.moe_top_k <= cfg.moe_experts:
        raise LmgolfError(f"config fields model.moe_top_k and model.moe_experts: top-k {cfg.moe_top_k} must lie "
                          f"in [1, {cfg.moe_experts}]")
    if any(not 0 <= i < cfg.n_layer for i in cfg.ssm_blocks):
        raise LmgolfError(f"config fields model.ssm_layers and model.n_layer: {cfg.ssm_layers!r} names a block "
                          f"outside 0..{cfg.n_layer - 1}")
    if min(cfg.ssm_state, cfg.ssm_expand, cfg.ssm_conv - 1) < 1:
        raise LmgolfError("config fields model.ssm_state, ssm_expand and ssm_conv: must be >= 1, >= 1 and >= 2")
    if cfg.diff_attn and (cfg.head_size % 4 or cfg.rope_dims is not None):
        raise LmgolfError("config fields model.diff_attn and model.head_dim/rope_dims: differential attention needs "
                          "a head size divisible by 4 and full RoPE")
    if any(not 1 <= d < len(cfg.layer_order) for d in cfg.exit_depths):
        raise LmgolfError(f"config fields model.exit_layers and model.n_layer: exits must sit at depths 1.."
                          f"{len(cfg.layer_order) - 1}, got {cfg.exit_layers!r}")
    if not 0 <= cfg.exit_threshold <= 1:
        raise LmgolfError("config field model.exit_threshold: must lie in [0, 1]")
    if cfg.family != "transformer" and (cfg.window < 1 or cfg.exit_layers.strip() or cfg.unet_skips):
        raise LmgolfError(f"config fields model.family and model.window/exit_layers/unet_skips: the {cfg.family} "
                          "family needs window >= 1 and has no layers for exits or skips")
    if not 0 <= cfg.recur_start < 1 or (cfg.recur_start and (not cfg.depth_pattern.strip() or cfg.unet_skips)):
        raise LmgolfError("config fields model.recur_start, model.depth_pattern and model.unet_skips: recur_start "
                          "lies in [0, 1) and, when set, needs a depth_pattern and no unet_skips")
    if cfg.nope_every < 0:
        raise LmgolfError("config field model.nope_every: must be >= 0")
    if cfg.q_gain is not None and not cfg.qk_norm:
        raise LmgolfError("config fields model.q_gain and model.qk_norm: the query gain needs qk_norm=true")
    for name in ("dropout", "attn_dropout", "resid_dropout", "embed_dropout"):
        if getattr(cfg, name) is not None and not 0 <= getattr(cfg, name) < 1:
            raise LmgolfError(f"config field model.{name}: a dropout rate must lie in [0, 1), got {getattr(cfg, name)}")


def check_train(cfg) -> None:
    """A TrainConfig's fields."""
    choices = {"device": ("auto", "cpu", "cuda"), "dtype": ("auto", "bf16", "fp32"),
               "compile": ("auto", "on", "off"), "cpu_malloc": ("reuse", "system"), "optimizer": ("muon", "adamw")}
    for name, allowed in choices.items():
        if getattr(cfg, name) not in allowed:
            raise LmgolfError(f"config field train.{name}: {getattr(cfg, name)!r} is not one of {', '.join(allowed)}")
    _finite(cfg, "train")
    for name in ("batch_tokens", "micro_batch", "log_every", "eval_tokens"):
        if getattr(cfg, name) < 1:
            raise LmgolfError(f"config field train.{name}: must be >= 1")
    for name in ("lr", "matrix_lr", "embed_lr", "head_lr", "scalar_lr"):
        if not getattr(cfg, name) > 0:
            raise LmgolfError(f"config field train.{name}: a learning rate must be > 0, got {getattr(cfg, name)}")
    for name in ("momentum", "beta1", "beta2"):
        if not 0 <= getattr(cfg, name) < 1:
            raise LmgolfError(f"config field train.{name}: must lie in [0, 1), got {getattr(cfg, name)}")
    for name in ("weight_decay", "grad_clip", "eval_every", "checkpoint_every"):
        if getattr(cfg, name) < 0:
            raise LmgolfError(f"config field train.{name}: must be >= 0")
    if not 0 <= cfg.min_lr_frac <= 1:
        raise LmgolfError("config field train.min_lr_frac: must lie in [0, 1]")
    if cfg.decay not in ("linear", "cosine"):
        raise LmgolfError(f"config field train.decay: {cfg.decay!r} is not one of linear, cosine")
    for name in ("warmdown_steps", "momentum_warmup_steps"):
        if getattr(cfg, name) < 0:
            raise LmgolfError(f"config field train.{name}: must be >= 0, got {getattr(cfg, name)}")
    if not 0 <= cfg.momentum_start < 1:
        raise LmgolfError(f"config field train.momentum_start: must lie in [0, 1), got {cfg.momentum_start}")
    if cfg.momentum_warmup_steps and cfg.optimizer != "muon":
        raise LmgolfError("config field train.momentum_warmup_steps: warms up Muon's momentum, set train.optimizer=muon or 0")
    if cfg.warmdown_steps and cfg.decay != "linear":
        raise LmgolfError("config field train.warmdown_steps: sets the linear warmdown, unused with train.decay=cosine (set 0)")
    if cfg.warmdown_steps and cfg.qat_lr_scale:
        raise LmgolfError("config fields train.warmdown_steps and train.qat_lr_scale: cannot be combined, "
                          "start QAT with train.qat_start instead")
    if cfg.warmdown_steps and cfg.swa_every and cfg.swa_start is None:
        raise LmgolfError("config fields train.warmdown_steps and train.swa_start: with warmdown_steps "
                          "set train.swa_start (its default is the fractional warmdown's start)")
    if cfg.max_steps < 0 or cfg.time_budget < 0:
        raise LmgolfError("config fields train.max_steps and train.time_budget: must be >= 0")
    if not 0 <= cfg.warmup + cfg.warmdown <= 1:
        raise LmgolfError("config fields train.warmup and train.warmdown: together they must lie in [0, 1]")
    if not 0 <= cfg.qat_start <= 1 or not 0 <= cfg.qat_lr_scale <= 1:
        raise LmgolfError("config fields train.qat_start and train.qat_lr_scale: must lie in [0, 1]")
    if not 0 <= cfg.ema_decay < 1:
        raise LmgolfError(f"config field train.ema_decay: must lie in [0, 1), got {cfg.ema_decay}")
    if cfg.swa_every < 0:
        raise LmgolfError("config field train.swa_every: must be >= 0")
    for name in ("ema_start", "swa_start"):
        if getattr(cfg, name) is not None and not 0 <= getattr(cfg, name) < 1:
            raise LmgolfError(f"config field train.{name}: must lie in [0, 1), got {getattr(cfg, name)}")
    if cfg.export_weights not in ("raw", "ema", "swa"):
        raise LmgolfError(f"config field train.export_weights: {cfg.export_weights!r} is not one of raw, ema, swa")
    if (cfg.export_weights == "ema" and not cfg.ema_decay) or (cfg.export_weights == "swa" and not cfg.swa_every):
        raise LmgolfError(f"config field train.export_weights: {cfg.export_weights!r} needs "
                          f"{'train.ema_decay > 0' if cfg.export_weights == 'ema' else 'train.swa_every > 0'}")
    if cfg.teacher is not None and not cfg.teacher.strip():
        raise LmgolfError("config field train.teacher: an empty path (null for no teacher)")
    if not 0 <= cfg.distill_alpha <= 1:
        raise LmgolfError(f"config field train.distill_alpha: must lie in [0, 1], got {cfg.distill_alpha}")
    if not cfg.distill_temperature > 0:
        raise LmgolfError(f"config field train.distill_temperature: must be > 0, got {cfg.distill_temperature}")
    if cfg.curriculum not in ("none", "length", "loss"):
        raise LmgolfError(f"config field train.curriculum: {cfg.curriculum!r} is not one of none, length, loss")
    if (cfg.curriculum == "loss") != bool(cfg.curriculum_model):
        raise LmgolfError("config fields train.curriculum and train.curriculum_model: curriculum=loss needs a reference "
                          "model (a run folder or artifact), and only it takes one")
    if not 0 < cfg.curriculum_start_quantile <= 1:
        raise LmgolfError(f"config field train.curriculum_start_quantile: must lie in (0, 1], got {cfg.curriculum_start_quantile}")
    if not 0 <= cfg.curriculum_end <= 1:
        raise LmgolfError(f"config field train.curriculum_end: must lie in [0, 1], got {cfg.curriculum_end}")
    if any(length < 1 for _, length in parse_phases(cfg.context_schedule, "train.context_schedule", int)):
        raise LmgolfError(f"config field train.context_schedule: {cfg.context_schedule!r}: every length must be >= 1")
    if any(not 0 < share <= 1 for _, share in parse_phases(cfg.batch_schedule, "train.batch_schedule")):
        raise LmgolfError(f"config field train.batch_schedule: {cfg.batch_schedule!r}: every value is a fraction of "
                          "train.batch_tokens in (0, 1]")


def parse_phases(text: str, field_name: str, kind=float) -> list[tuple[float, float]]:
    """A schedule "V@F,V@F,..." as [(F, V)] by budget fraction F: the first at 0, increasing, each in [0, 1);
    V holds from its F to the next. "" is []. Errors name `field_name` (e.g. train.context_schedule)."""
    phases = []
    for part in (p.strip() for p in text.split(",")) if text.strip() else ():
        value, at, start = part.partition("@")
        try:
            phase = (float(start), kind(value))
        except ValueError:
            raise LmgolfError(f"config field {field_name}: {part!r} is not VALUE@FRACTION (as in \"256@0,512@0.3\")") from None
        if not at or not math.isfinite(phase[0]) or not math.isfinite(phase[1]):
            raise LmgolfError(f"config field {field_name}: {part!r} is not VALUE@FRACTION with finite numbers")
        phases.append(phase)
    fractions = [f for f, _ in phases]
    if phases and (fractions[0] != 0 or any(b <= a for a, b in zip(fractions, fractions[1:])) or fractions[-1] >= 1):
        raise LmgolfError(f"config field {field_name}: {text!r}: the fractions must start at 0, increase and stay below 1")
    return phases


def check_pack(cfg) -> None:
    """A PackPolicy's fields: codec, storages, clip rules and the groups or patterns its rules name."""
    _finite(cfg, "pack")
    if cfg.codec in OPTIONAL_CODECS and cfg.codec not in CODECS:
        raise LmgolfError(f"config field pack.codec: {missing_codec_message(cfg.codec)}")
    if cfg.codec not in CODECS:
        raise LmgolfError(f"config field pack.codec: {cfg.codec!r} is not one of {', '.join(CODECS)}")
    if cfg.min_quant_numel < 0:
        raise LmgolfError("config field pack.min_quant_numel: must be >= 0")
    if not 0 < cfg.clip_quantile <= 1:
        raise LmgolfError("config field pack.clip_quantile: must lie in (0, 1]")
    if cfg.min_scale < 0:
        raise LmgolfError("config field pack.min_scale: must be >= 0")
    if cfg.clip not in CLIP_RULES:
        raise LmgolfError(f"config field pack.clip: {cfg.clip!r} is not one of {', '.join(CLIP_RULES)}")
    if not cfg.clip_k > 0:
        raise LmgolfError("config field pack.clip_k: must be > 0")
    if cfg.bit_pack not in ("auto", "on", "off", True, False):
        raise LmgolfError(f"config field pack.bit_pack: {cfg.bit_pack!r} is not one of auto, on, off")
    if cfg.ternary_group < 1:
        raise LmgolfError("config field pack.ternary_group: must be >= 1")
    if cfg.gptq_calibration not in ("train", "self"):
        raise LmgolfError(f"config field pack.gptq_calibration: {cfg.gptq_calibration!r} is not one of train, self")
    if cfg.gptq_tokens < 1 or cfg.gptq_block < 1 or not cfg.gptq_damp > 0:
        raise LmgolfError("config fields pack.gptq_tokens, pack.gptq_block, pack.gptq_damp: must be positive")
    if not 0 <= cfg.prune < 1:
        raise LmgolfError("config field pack.prune: the sparsity must lie in [0, 1)")
    if cfg.prune_scope not in ("tensor", "global"):
        raise LmgolfError(f"config field pack.prune_scope: {cfg.prune_scope!r} is not one of tensor, global")
    for key, rank in cfg.lowrank.items():
        if not isinstance(rank, int) or rank < 1:
            raise LmgolfError(f"config field pack.lowrank[{key!r}]: the rank must be an integer >= 1")
    for key in (*cfg.prune_targets, *cfg.lowrank):
        _check_target("prune_targets or lowrank", key, GROUPS)
    _check_storage("default_storage", cfg.default_storage)
    for key, storage in cfg.group_storage.items():
        _check_storage(f"group_storage[{key!r}]", storage)
        _check_target("group_storage", key, GROUPS)


def _check_target(field_name: str, key: str, groups: tuple[str, ...]) -> None:
    if key not in groups and not any(c in key for c in ".*?["):
        raise LmgolfError(f"config field pack.{field_name}: {key!r} is neither a parameter group "
                          f"({', '.join(groups)}) nor a tensor name pattern")


def _check_storage(field_name: str, storage: object) -> None:
    if storage not in STORAGES:
        raise LmgolfError(f"config field pack.{field_name}: {storage!r} is not one of {', '.join(STORAGES)}")
