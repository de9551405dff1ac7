"""The config schema: model, training and packing dataclasses, each field with its meaning.

Cross-field checks live in lmgolf.config.checks, the JSON loader in lmgolf.config.fields, presets and
`key=value` overrides in lmgolf.config.load. A run folder stores the full resolved config as
`config.json`, which loads back with `Config.from_dict`.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from lmgolf.config.checks import check_model, check_pack, check_train
from lmgolf.config.fields import build
from lmgolf.errors import LmgolfError
from lmgolf.runfiles import atomic_write_text


@dataclass
class ModelConfig:
    vocab_size: int = 1024
    family: str = "transformer"         # transformer | linear | mlp (the window models of the small-model ladder)
    window: int = 8                     # linear/mlp families: how many previous tokens they read
    n_layer: int = 9
    d_model: int = 512
    n_head: int = 8
    n_kv_head: int | None = None        # None: same as n_head (MHA); fewer: GQA; 1: MQA
    head_dim: int | None = None         # None: d_model // n_head
    context: int = 1024                 # training sequence length; the learned position table size
    positions: str = "rope"             # rope | learned | none
    rope_base: float = 10000.0
    rope_dims: int | None = None        # partial RoPE: rotate only the first rope_dims of each head (None: all)
    nope_every: int = 0                 # every k-th layer (k, 2k, ...) has no positional encoding (SmolLM3); 0: off
    norm: str = "rmsnorm"               # rmsnorm | layernorm (always pre-norm)
    norm_gain: bool = True              # learned per-channel gain in every norm
    norm_eps: float = 1e-5
    norm_position: str = "pre"          # pre: x + f(norm(x)) | post: norm(x + f(x)), without a final norm
    ln_scale: bool = False              # each block's norm outputs times 1/sqrt(layer index + 1)
    embed_norm: bool = False            # normalize the token embedding before the first block
    embed_rank: int | None = None       # factorized embedding: V x r table then r x d projection (ALBERT);
                                        # shared with the output head when tied
    bigram_buckets: int = 0             # BigramHash: hashed (previous, current) token pairs, B buckets; 0: off
    bigram_dim: int = 64                # BigramHash table width, projected to d_model
    smear_gate: bool = False            # SmearGate: x_t <- (1 - g_t) x_t + g_t x_(t-1), g_t a learned sigmoid gate
    qk_norm: bool = False               # gain-free RMSNorm of queries and keys, per head
    q_gain: float | None = None         # learned per-head query gain, with this initial value
    mlp: str = "swiglu"                 # gelu | swiglu | relu2 | leaky_relu2
    leaky_slope: float = 0.5            # negative slope of leaky_relu2
    mlp_mult: float = 4.0               # hidden = mlp_mult * d_model, unless mlp_hidden is set
    mlp_hidden: int | None = None
    ssm_layers: str | int = ""          # blocks whose token mixer is a selective SSM instead of attention: "all" or "1,3"
    ssm_state: int = 16                 # SSM state size N per channel
    ssm_expand: int = 2                 # SSM inner width = ssm_expand x d_model
    ssm_conv: int = 4                   # SSM causal depthwise convolution width
    moe_experts: int = 0                # mixture of experts: this many MLPs per block, top-k routed; 0: a dense MLP
    moe_top_k: int = 2
    moe_aux_weight: float = 0.01        # weight of the load-balance loss added to the training loss
    bias: bool = False                  # biases in linear layers and LayerNorm
    tie_embeddings: bool = True
    logit_softcap: float | None = None  # logits <- c * tanh(logits / c)
    doc_mask: bool = False              # no attention across a BOS inside a packed window (needs bos_id)
    bos_id: int | None = None           # the document delimiter; training sets it from the data folder
    attn_softcap: float | None = None   # attention scores <- c * tanh(scores / c) (Gemma 2); runs without fused SDPA
    attn_kernel: str = "auto"           # auto | fused | matmul: attention's core; auto: matmuls for bf16 on a CPU
                                        # up to 512 keys, where they beat the fused kernel (lmgolf.model.attention)
    attn_gate: str = "none"             # none | head | element: output times sigmoid(linear(x)) (gated attention)
    diff_attn: bool = False             # differential attention (Diff Transformer): two softmax maps, learned lambda
    value_residual: bool = False        # every layer after the first mixes the first layer's values into its own
    exclusive_attn: bool = False        # remove each attention output's component along its own token's value
    parallel_from: int | None = None    # blocks from this index on: x + attn(norm(x)) + mlp(norm(x))
    depth_pattern: str | int = ""       # depth recurrence: block indices in the order applied, e.g. "0,1,2,3,0,1,2,3"
                                        # (n_layer unique blocks; "" applies each once, in order)
    exit_layers: str | int = ""         # early exit: depths (e.g. "2,4") after which the shared final norm and head
                                        # also predict; trained jointly
    exit_weight: float = 1.0            # weight of the mean early-exit loss in training
    exit_threshold: float = 0.0         # inference: a token takes the first exit whose top probability reaches this
    recur_start: float = 0.0            # depth_pattern switches on after this fraction of the training budget
    unet_skips: bool = False            # first half of the blocks push, second half add (learned weights)
    resid_mix: bool = False             # each block mixes its input with the embedding stream x0 (learned)
    output_scales: bool = False         # learned per-channel scales on attention and MLP outputs
    zero_init_proj: bool = False        # zero-init the attention and MLP output projections
    init_std: float = 0.02
    embed_init_std: float = 0.02
    dropout: float = 0.0                # nanoGPT's dropout: embedding output, attention probabilities and the attention and
                                        # MLP residual branch outputs, in training only; 0: off
    attn_dropout: float | None = None   # ... the attention probabilities' own rate (None: dropout)
    resid_dropout: float | None = None  # ... the residual branch outputs' own rate (None: dropout)
    embed_dropout: float | None = None  # ... the embedding output's own rate (None: dropout)

    def __post_init__(self):
        # a one-element list such as `model.ssm_layers=1` arrives as an int from a key=value override
        for name in ("ssm_layers", "depth_pattern", "exit_layers"):
            if isinstance(getattr(self, name), int) and not isinstance(getattr(self, name), bool):
                setattr(self, name, str(getattr(self, name)))

    def dropout_rate(self, part: str) -> float:
        """The dropout rate of `part` (attn, resid or embed): its own field, else `dropout`."""
        rate = getattr(self, f"{part}_dropout")
        return self.dropout if rate is None else rate

    @property
    def kv_heads(self) -> int:
        return self.n_kv_head or self.n_head

    @property
    def head_size(self) -> int:
        return self.head_dim or self.d_model // self.n_head

    @property
    def layer_order(self) -> list[int]:
        """The block applied at each depth step (depth recurrence reuses blocks)."""
        if not self.depth_pattern.strip():
            return list(range(self.n_layer))
        try:
            return [int(i) for i in self.depth_pattern.split(",")]
        except ValueError:
            raise LmgolfError(f"config field model.depth_pattern: {self.depth_pattern!r} is not a comma-separated "
                              "list of block indices") from None

    @property
    def exit_depths(self) -> list[int]:
        try:
            return sorted({int(i) for i in self.exit_layers.split(",")}) if self.exit_layers.strip() else []
        except ValueError:
            raise LmgolfError(f"config field model.exit_layers: {self.exit_layers!r} is not a comma-separated list "
                              "of depths") from None

    @property
    def ssm_blocks(self) -> set[int]:
        if self.ssm_layers.strip() == "all":
            return set(range(self.n_layer))
        if not self.ssm_layers.strip():
            return set()
        try:
            return {int(i) for i in self.ssm_layers.split(",")}
        except ValueError:
            raise LmgolfError(f"config field model.ssm_layers: {self.ssm_layers!r} is not 'all' or a comma-separated "
                              "list of block indices") from None

    @property
    def hidden(self) -> int:
        """The MLP width; SwiGLU's three matrices get 2/3 of it so its parameters match a two-matrix MLP."""
        if self.mlp_hidden:
            return self.mlp_hidden
        width = self.mlp_mult * self.d_model
        return int(2 * width / 3) if self.mlp == "swiglu" else int(width)

    def validate(self) -> None:
        check_model(self)


@dataclass
class TrainConfig:
    seed: int = 1337
    device: str = "auto"                # auto | cpu | cuda
    dtype: str = "auto"                 # auto | bf16 | fp32 (autocast dtype)
    compile: str = "auto"               # auto | on | off
    cpu_malloc: str = "reuse"           # reuse (CPU: freed blocks kept for the next step, lmgolf/allocator.py) | system
    batch_tokens: int = 8192            # global tokens per optimizer step
    micro_batch: int = 16               # sequences per forward pass on one process
    max_steps: int = 0                  # 0: no step limit
    time_budget: float = 0.0            # seconds of training (excludes compilation and evaluation); 0: none
    optimizer: str = "muon"             # muon (2-D hidden matrices) + adam (the rest) | adamw
    lr: float = 3e-3                    # adamw: every parameter
    matrix_lr: float = 0.04             # muon: 2-D hidden matrices
    embed_lr: float = 0.05              # muon: embeddings (adam)
    head_lr: float = 0.008              # muon: untied output head (adam)
    scalar_lr: float = 0.04             # muon: gains, scales, biases (adam)
    momentum: float = 0.95              # muon's momentum (after the warmup below)
    momentum_warmup_steps: int = 0      # muon: momentum linear from momentum_start to momentum over these steps; 0: off
    momentum_start: float = 0.85        # ... starting here (the baseline: 0.85 -> 0.95 over 500 steps)
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    warmup: float = 0.0                 # fraction of the budget with a linear LR ramp
    warmdown: float = 0.2               # fraction of the budget at the end with a linear decay
    warmdown_steps: int = 0             # linear warmdown over the last N steps (time budget: by the mean step time); 0: use warmdown
    min_lr_frac: float = 0.0            # LR at the very end, as a fraction of the peak
    decay: str = "linear"               # linear (flat, then the warmdown) | cosine (over everything after the warmup)
    grad_clip: float = 0.0              # max global gradient norm; 0: off
    eval_every: int = 0                 # steps between validation passes; 0: only at the end
    eval_tokens: int = 65536            # validation prefix for periodic passes (the final pass uses all)
    checkpoint_every: int = 0           # steps between checkpoints; 0: only at the end
    log_every: int = 10
    tensorboard: bool = False           # also write the metrics log's scalars to RUN/tensorboard/ (needs tensorboard)
    qat: bool = False                   # fake-quantize weights with the pack policy's quantizer (lmgolf.training.qat)
    qat_start: float = 0.0              # ... from this fraction of the budget on
    qat_lr_scale: float = 0.0           # ... or once the warmdown has brought the LR multiplier to this (0: unused)
    ema_decay: float = 0.0              # EMA of the weights with this decay, e.g. 0.997 (lmgolf.training.averaging); 0: off
    ema_start: float = 0.0              # ... from this fraction of the budget on
    swa_every: int = 0                  # SWA: a uniform mean of the weights every this many steps; 0: off
    swa_start: float | None = None      # ... from this fraction of the budget on (None: the warmdown's start)
    export_weights: str = "raw"         # raw | ema | swa: what the final checkpoint's model (and so the artifact) holds
    teacher: str | None = None          # distillation (lmgolf.training.distill): an lmgolf run folder or .lmg artifact, or a
                                        # local Hugging Face causal-LM folder, with the student's tokenizer; None: off
    distill_alpha: float = 0.5          # ... loss = a T^2 KL(teacher_T || student_T) + (1 - a) cross-entropy
    distill_temperature: float = 2.0    # ... T, the softmax temperature of both
    curriculum: str = "none"            # none | length | loss: windows from the easiest documents first (lmgolf.data.curriculum)
    curriculum_model: str | None = None # loss: the reference model (a run folder or artifact) whose per-document loss scores
    curriculum_start_quantile: float = 0.2  # at the start windows come from this easiest share of the documents ...
    curriculum_end: float = 0.5         # ... growing linearly to all of them (uniform sampling) at this budget fraction
    context_schedule: str = ""          # sequence length by budget fraction, e.g. "256@0,512@0.3,1024@0.6" (the longest:
                                        # model.context); tokens per step stay batch_tokens; "": model.context throughout
    batch_schedule: str = ""            # tokens per step as fractions of batch_tokens by budget fraction (batch-size warmup),
                                        # e.g. "0.25@0,0.5@0.1,1@0.2"; "": batch_tokens throughout

    def validate(self) -> None:
        check_train(self)


@dataclass(frozen=True)
class PackPolicy:
    """Which storage each tensor gets, with what clip, and how the payload is compressed.

    keep_fp16 / keep_fp32: tensor names or fnmatch patterns (e.g. "tok_emb.weight", "*.resid_mix").
    group_storage: parameter group (lmgolf.params.GROUPS) or tensor name pattern -> storage name, e.g.
      {"embedding": "int8-row", "attention": "int6-row", "mlp": "int5-row"}; patterns win over groups.
    default_storage: for tensors that no rule names.
    A quantizer storage applies only to 2-D tensors of at least min_quant_numel elements; smaller
    tensors get fp16 unless a rule gives them a float storage (fp16, bf16, fp32).
    clip: "percentile" (clip_quantile of |w|), "std" (clip_k x row std) or "search" (lowest error).
    min_scale: floor on integer row scales (0: none; the Parameter Golf baseline script uses 1/127).
    bit_pack: b-bit codes (b < 8) packed back to back ("on") or one byte each ("off"); "auto" packs
      4 bits and fewer, where packing compresses better with lzma, zstd and brotli (docs/artifact.md).
    byte_shuffle: blobs of multi-byte values (and packed codes) byte-transposed before compression.
    gptq: quantize each matrix column by column with GPTQ error feedback (lmgolf.packing.gptq), from Hessians of
      gptq_tokens calibration tokens of gptq_calibration ("train": training data, "self": text the
      model samples itself); gptq_damp x mean diagonal is added to the Hessian, gptq_block columns a block.
    prune: share of the chosen weights (prune_targets: groups or name patterns; empty: every quantized
      matrix) set to zero by magnitude before quantization, per tensor or global (prune_scope).
    lowrank: group or name pattern -> rank r of a correction A @ B (fp16) of that tensor's quantization error.
    """
    codec: str = "zlib"
    min_quant_numel: int = 65_536
    clip_quantile: float = 0.9999984
    keep_fp16: tuple[str, ...] = ()
    keep_fp32: tuple[str, ...] = ()
    min_scale: float = 0.0
    default_storage: str = "int8-row"
    group_storage: dict[str, str] = field(default_factory=dict)
    clip: str = "percentile"
    clip_k: float = 4.0
    bit_pack: str | bool = "auto"
    ternary_group: int = 64
    byte_shuffle: bool = False
    gptq: bool = False
    gptq_calibration: str = "train"
    gptq_tokens: int = 32_768
    gptq_damp: float = 0.01
    gptq_block: int = 128
    prune: float = 0.0
    prune_scope: str = "tensor"
    prune_targets: tuple[str, ...] = ()
    lowrank: dict[str, int] = field(default_factory=dict)

    def validate(self) -> None:
        check_pack(self)

    def packs_bits(self, bits: int) -> bool:
        if self.bit_pack == "auto":
            return bits <= 4
        return self.bit_pack in ("on", True)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    pack: PackPolicy = field(default_factory=PackPolicy)
    preset: str = ""

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "config") -> "Config":
        if not isinstance(data, dict):
            raise LmgolfError(f"{source}: expected a JSON object")
        unknown = set(data) - {"model", "train", "pack", "preset"}
        if unknown:
            raise LmgolfError(f"{source}: unknown config section {sorted(unknown)[0]!r} (known: model, train, pack)")
        model = build(ModelConfig, data.get("model", {}), f"{source}: model")
        train = build(TrainConfig, data.get("train", {}), f"{source}: train")
        pack = build(PackPolicy, data.get("pack", {}), f"{source}: pack")
        cfg = cls(model=model, train=train, pack=pack, preset=str(data.get("preset", "")))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()
        self.pack.validate()

    def save(self, path: str | Path) -> None:
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")

