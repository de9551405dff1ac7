"""One config object: model, training and packing dataclasses, named presets, and `key=value` overrides.

Presets are JSON files in `lmgolf/presets/`. A run folder stores the full resolved config as
`config.json`, which loads back with `Config.from_dict`.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

from lmgolf.errors import LmgolfError

PRESET_DIR = Path(__file__).parent / "presets"


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
    ssm_layers: str = ""                # blocks whose token mixer is a selective SSM instead of attention: "all" or "1,3"
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
    attn_gate: str = "none"             # none | head | element: output times sigmoid(linear(x)) (gated attention)
    diff_attn: bool = False             # differential attention (Diff Transformer): two softmax maps, learned lambda
    value_residual: bool = False        # every layer after the first mixes the first layer's values into its own
    exclusive_attn: bool = False        # remove each attention output's component along its own token's value
    parallel_from: int | None = None    # blocks from this index on: x + attn(norm(x)) + mlp(norm(x))
    depth_pattern: str = ""             # depth recurrence: block indices in the order applied, e.g. "0,1,2,3,0,1,2,3"
                                        # (n_layer unique blocks; "" applies each once, in order)
    exit_layers: str = ""               # early exit: depths (e.g. "2,4") after which the shared final norm and head
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
        choices = {"family": ("transformer", "linear", "mlp"), "positions": ("rope", "learned", "none"), "norm": ("rmsnorm", "layernorm"),
                   "norm_position": ("pre", "post"), "attn_gate": ("none", "head", "element"), "mlp": ("gelu", "swiglu", "relu2", "leaky_relu2")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise LmgolfError(f"config field model.{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("vocab_size", "n_layer", "d_model", "n_head", "context"):
            if getattr(self, name) < 1:
                raise LmgolfError(f"config field model.{name}: must be >= 1")
        if self.head_dim is None and self.d_model % self.n_head:
            raise LmgolfError(f"config fields model.d_model and model.n_head: {self.d_model} is not divisible by {self.n_head}")
        if self.n_head % self.kv_heads:
            raise LmgolfError(f"config fields model.n_head and model.n_kv_head: {self.n_head} heads cannot be grouped into {self.kv_heads}")
        if self.positions == "rope" and self.head_size % 2:
            raise LmgolfError("config fields model.positions and model.head_dim: RoPE needs an even head size")
        if self.rope_dims is not None and not (0 < self.rope_dims <= self.head_size and self.rope_dims % 2 == 0):
            raise LmgolfError(f"config fields model.rope_dims and model.head_dim: rope_dims must be even and in "
                              f"(0, {self.head_size}], got {self.rope_dims}")
        if (self.rope_dims is not None or self.nope_every) and self.positions != "rope":
            raise LmgolfError("config fields model.rope_dims/model.nope_every and model.positions: they need positions=rope")
        if self.parallel_from is not None and not 0 <= self.parallel_from < self.n_layer:
            raise LmgolfError(f"config fields model.parallel_from and model.n_layer: {self.parallel_from} is not a layer index")
        if self.parallel_from is not None and self.norm_position == "post":
            raise LmgolfError("config fields model.parallel_from and model.norm_position: parallel blocks are pre-norm")
        if (self.bigram_buckets or self.smear_gate or self.doc_mask) and self.bos_id is not None \
                and not 0 <= self.bos_id < self.vocab_size:
            raise LmgolfError(f"config fields model.bos_id and model.vocab_size: {self.bos_id} is not a token id")
        if self.bigram_buckets < 0 or self.bigram_dim < 1:
            raise LmgolfError("config fields model.bigram_buckets and model.bigram_dim: must be >= 0 and >= 1")
        if self.attn_softcap is not None and self.attn_softcap <= 0:
            raise LmgolfError("config field model.attn_softcap: must be > 0 (or null for none)")
        order = self.layer_order
        if any(not 0 <= i < self.n_layer for i in order) or set(order) != set(range(self.n_layer)):
            raise LmgolfError(f"config fields model.depth_pattern and model.n_layer: the pattern must use every block "
                              f"0..{self.n_layer - 1} and no other, got {self.depth_pattern!r}")
        if self.embed_rank is not None and not 0 < self.embed_rank:
            raise LmgolfError("config field model.embed_rank: must be > 0 (or null for a full table)")
        if self.moe_experts and not 1 <= self.moe_top_k <= self.moe_experts:
            raise LmgolfError(f"config fields model.moe_top_k and model.moe_experts: top-k {self.moe_top_k} must lie "
                              f"in [1, {self.moe_experts}]")
        if any(not 0 <= i < self.n_layer for i in self.ssm_blocks):
            raise LmgolfError(f"config fields model.ssm_layers and model.n_layer: {self.ssm_layers!r} names a block "
                              f"outside 0..{self.n_layer - 1}")
        if min(self.ssm_state, self.ssm_expand, self.ssm_conv - 1) < 1:
            raise LmgolfError("config fields model.ssm_state, ssm_expand and ssm_conv: must be >= 1, >= 1 and >= 2")
        if self.diff_attn and (self.head_size % 4 or self.rope_dims is not None):
            raise LmgolfError("config fields model.diff_attn and model.head_dim/rope_dims: differential attention needs "
                              "a head size divisible by 4 and full RoPE")
        if any(not 1 <= d < len(self.layer_order) for d in self.exit_depths):
            raise LmgolfError(f"config fields model.exit_layers and model.n_layer: exits must sit at depths 1.."
                              f"{len(self.layer_order) - 1}, got {self.exit_layers!r}")
        if not 0 <= self.exit_threshold <= 1:
            raise LmgolfError("config field model.exit_threshold: must lie in [0, 1]")
        if self.family != "transformer" and (self.window < 1 or self.exit_layers.strip() or self.unet_skips):
            raise LmgolfError(f"config fields model.family and model.window/exit_layers/unet_skips: the {self.family} "
                              "family needs window >= 1 and has no layers for exits or skips")
        if not 0 <= self.recur_start < 1 or (self.recur_start and (not self.depth_pattern.strip() or self.unet_skips)):
            raise LmgolfError("config fields model.recur_start, model.depth_pattern and model.unet_skips: recur_start "
                              "lies in [0, 1) and, when set, needs a depth_pattern and no unet_skips")
        if self.nope_every < 0:
            raise LmgolfError("config field model.nope_every: must be >= 0")
        if self.q_gain is not None and not self.qk_norm:
            raise LmgolfError("config fields model.q_gain and model.qk_norm: the query gain needs qk_norm=true")


@dataclass
class TrainConfig:
    seed: int = 1337
    device: str = "auto"                # auto | cpu | cuda
    dtype: str = "auto"                 # auto | bf16 | fp32 (autocast dtype)
    compile: str = "auto"               # auto | on | off
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
    momentum: float = 0.95
    beta1: float = 0.9
    beta2: float = 0.95
    weight_decay: float = 0.0
    warmup: float = 0.0                 # fraction of the budget with a linear LR ramp
    warmdown: float = 0.2               # fraction of the budget at the end with a linear decay
    min_lr_frac: float = 0.0            # LR at the very end, as a fraction of the peak
    grad_clip: float = 0.0              # max global gradient norm; 0: off
    eval_every: int = 0                 # steps between validation passes; 0: only at the end
    eval_tokens: int = 65536            # validation prefix for periodic passes (the final pass uses all)
    checkpoint_every: int = 0           # steps between checkpoints; 0: only at the end
    log_every: int = 10
    qat: bool = False                   # fake-quantize weights with the pack policy's quantizer (lmgolf.qat)
    qat_start: float = 0.0              # ... from this fraction of the budget on
    qat_lr_scale: float = 0.0           # ... or once the warmdown has brought the LR multiplier to this (0: unused)

    def validate(self) -> None:
        choices = {"device": ("auto", "cpu", "cuda"), "dtype": ("auto", "bf16", "fp32"),
                   "compile": ("auto", "on", "off"), "optimizer": ("muon", "adamw")}
        for name, allowed in choices.items():
            if getattr(self, name) not in allowed:
                raise LmgolfError(f"config field train.{name}: {getattr(self, name)!r} is not one of {', '.join(allowed)}")
        for name in ("batch_tokens", "micro_batch"):
            if getattr(self, name) < 1:
                raise LmgolfError(f"config field train.{name}: must be >= 1")
        if self.max_steps < 0 or self.time_budget < 0:
            raise LmgolfError("config fields train.max_steps and train.time_budget: must be >= 0")
        if not 0 <= self.warmup + self.warmdown <= 1:
            raise LmgolfError("config fields train.warmup and train.warmdown: together they must lie in [0, 1]")
        if not 0 <= self.qat_start <= 1 or not 0 <= self.qat_lr_scale <= 1:
            raise LmgolfError("config fields train.qat_start and train.qat_lr_scale: must lie in [0, 1]")


@dataclass(frozen=True)
class PackPolicy:
    """Which storage each tensor gets, with what clip, and how the payload is compressed.

    keep_fp16 / keep_fp32: tensor names or fnmatch patterns (e.g. "tok_emb.weight", "*.resid_mix").
    group_storage: parameter group (lmgolf.count.GROUPS) or tensor name pattern -> storage name, e.g.
      {"embedding": "int8-row", "attention": "int6-row", "mlp": "int5-row"}; patterns win over groups.
    default_storage: for tensors that no rule names.
    A quantizer storage applies only to 2-D tensors of at least min_quant_numel elements; smaller
    tensors get fp16 unless a rule gives them a float storage (fp16, bf16, fp32).
    clip: "percentile" (clip_quantile of |w|), "std" (clip_k x row std) or "search" (lowest error).
    min_scale: floor on integer row scales (0: none; the Parameter Golf baseline script uses 1/127).
    bit_pack: b-bit codes (b < 8) packed back to back ("on") or one byte each ("off"); "auto" packs
      4 bits and fewer, where packing compresses better with lzma, zstd and brotli (docs/artifact.md).
    byte_shuffle: blobs of multi-byte values (and packed codes) byte-transposed before compression.
    gptq: quantize each matrix column by column with GPTQ error feedback (lmgolf.gptq), from Hessians of
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
        from lmgolf.artifact import CODECS, OPTIONAL_CODECS
        from lmgolf.count import GROUPS
        from lmgolf.quantize import CLIP_RULES
        if self.codec in OPTIONAL_CODECS and self.codec not in CODECS:
            raise LmgolfError(f"config field pack.codec: {missing_codec_message(self.codec)}")
        if self.codec not in CODECS:
            raise LmgolfError(f"config field pack.codec: {self.codec!r} is not one of {', '.join(CODECS)}")
        if self.min_quant_numel < 0:
            raise LmgolfError("config field pack.min_quant_numel: must be >= 0")
        if not 0 < self.clip_quantile <= 1:
            raise LmgolfError("config field pack.clip_quantile: must lie in (0, 1]")
        if self.min_scale < 0:
            raise LmgolfError("config field pack.min_scale: must be >= 0")
        if self.clip not in CLIP_RULES:
            raise LmgolfError(f"config field pack.clip: {self.clip!r} is not one of {', '.join(CLIP_RULES)}")
        if not self.clip_k > 0:
            raise LmgolfError("config field pack.clip_k: must be > 0")
        if self.bit_pack not in ("auto", "on", "off", True, False):
            raise LmgolfError(f"config field pack.bit_pack: {self.bit_pack!r} is not one of auto, on, off")
        if self.ternary_group < 1:
            raise LmgolfError("config field pack.ternary_group: must be >= 1")
        if self.gptq_calibration not in ("train", "self"):
            raise LmgolfError(f"config field pack.gptq_calibration: {self.gptq_calibration!r} is not one of train, self")
        if self.gptq_tokens < 1 or self.gptq_block < 1 or not self.gptq_damp > 0:
            raise LmgolfError("config fields pack.gptq_tokens, pack.gptq_block, pack.gptq_damp: must be positive")
        if not 0 <= self.prune < 1:
            raise LmgolfError("config field pack.prune: the sparsity must lie in [0, 1)")
        if self.prune_scope not in ("tensor", "global"):
            raise LmgolfError(f"config field pack.prune_scope: {self.prune_scope!r} is not one of tensor, global")
        for key, rank in self.lowrank.items():
            if not isinstance(rank, int) or rank < 1:
                raise LmgolfError(f"config field pack.lowrank[{key!r}]: the rank must be an integer >= 1")
        for key in (*self.prune_targets, *self.lowrank):
            _check_target("prune_targets or lowrank", key, GROUPS)
        _check_storage("default_storage", self.default_storage)
        for key, storage in self.group_storage.items():
            _check_storage(f"group_storage[{key!r}]", storage)
            _check_target("group_storage", key, GROUPS)

    def packs_bits(self, bits: int) -> bool:
        if self.bit_pack == "auto":
            return bits <= 4
        return self.bit_pack in ("on", True)

    def storage_for(self, name: str, tensor) -> str:
        from lmgolf.quantize import STORAGES
        if _matches(name, self.keep_fp32):
            return "fp32"
        if _matches(name, self.keep_fp16):
            return "fp16"
        storage = self._rule_for(name) or self.default_storage
        quantizable = tensor.ndim == 2 and tensor.numel() >= max(1, self.min_quant_numel)
        return storage if quantizable or not STORAGES[storage].quantizer else "fp16"

    def targets(self, name: str, keys) -> bool:
        """Whether a tensor is named by a list of parameter groups and name patterns."""
        from lmgolf.count import GROUPS, parameter_group
        return any(fnmatch.fnmatchcase(name, k) if k not in GROUPS else parameter_group(name) == k for k in keys)

    def _rule_for(self, name: str) -> str | None:
        from lmgolf.count import GROUPS, parameter_group
        for pattern, storage in self.group_storage.items():
            if pattern not in GROUPS and fnmatch.fnmatchcase(name, pattern):
                return storage
        return self.group_storage.get(parameter_group(name))


def missing_codec_message(name: str) -> str:
    return f"the {name} codec needs the {name} package (pip install {name})"


def _check_target(field_name: str, key: str, groups: tuple[str, ...]) -> None:
    if key not in groups and not any(c in key for c in ".*?["):
        raise LmgolfError(f"config field pack.{field_name}: {key!r} is neither a parameter group "
                          f"({', '.join(groups)}) nor a tensor name pattern")


def _check_storage(field_name: str, storage: object) -> None:
    from lmgolf.quantize import STORAGES
    if storage not in STORAGES:
        raise LmgolfError(f"config field pack.{field_name}: {storage!r} is not one of {', '.join(STORAGES)}")


def _matches(name: str, patterns: tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) for p in patterns)


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
        model = _build(ModelConfig, data.get("model", {}), f"{source}: model")
        train = _build(TrainConfig, data.get("train", {}), f"{source}: train")
        pack = _build(PackPolicy, data.get("pack", {}), f"{source}: pack")
        cfg = cls(model=model, train=train, pack=pack, preset=str(data.get("preset", "")))
        cfg.validate()
        return cfg

    def validate(self) -> None:
        self.model.validate()
        self.train.validate()
        self.pack.validate()

    def save(self, path: str | Path) -> None:
        from lmgolf.runfiles import atomic_write_text
        atomic_write_text(path, json.dumps(self.to_dict(), indent=2) + "\n")


def preset_names() -> list[str]:
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def load_preset(name: str) -> Config:
    path = PRESET_DIR / f"{name}.json"
    if not path.is_file():
        raise LmgolfError(f"unknown preset {name!r} (known: {', '.join(preset_names())})")
    data = json.loads(path.read_text())
    data["preset"] = name
    return Config.from_dict(data, source=str(path))


# Named packing policies (`lmgolf pack --policy NAME`); each is a set of pack.* fields over the defaults.
PACK_POLICIES = {
    "int8": {},
    "int6-emb8": {"default_storage": "int6-row", "group_storage": {"embedding": "int8-row"}},
    "int5-mlp": {"default_storage": "int6-row", "group_storage": {"embedding": "int8-row", "mlp": "int5-row"}},
    "ternary": {"default_storage": "ternary", "group_storage": {"embedding": "int8-row"}},
    "gptq-int6": {"default_storage": "int6-row", "group_storage": {"embedding": "int8-row"}, "gptq": True},
    "gptq-int4": {"default_storage": "int4-row", "group_storage": {"embedding": "int8-row"}, "gptq": True},
}


def pack_policy(base: PackPolicy, name: str | None = None, overrides: list[str] = ()) -> PackPolicy:
    """base, replaced by a named policy if given (its codec kept), then `key=value` overrides of pack.* fields."""
    data = dataclasses.asdict(base)
    if name is not None:
        if name not in PACK_POLICIES:
            raise LmgolfError(f"unknown packing policy {name!r} (known: {', '.join(PACK_POLICIES)})")
        data = {**dataclasses.asdict(PackPolicy()), "codec": base.codec, **PACK_POLICIES[name]}
    for item in overrides:
        if "=" not in item:
            raise LmgolfError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        key = key.strip().removeprefix("pack.")
        if key not in _field_types(PackPolicy):
            raise LmgolfError(f"unknown pack policy key {key!r} (known: {', '.join(_field_types(PackPolicy))})")
        data[key] = _parse_value(raw)
    policy = _build(PackPolicy, data, "pack policy")
    policy.validate()
    return policy


def load_config(preset: str, overrides: list[str] = ()) -> Config:
    """A preset with `section.key=value` overrides (the section may be left out when the key is unique)."""
    data = load_preset(preset).to_dict()
    for item in overrides:
        if "=" not in item:
            raise LmgolfError(f"override {item!r}: expected key=value")
        key, raw = item.split("=", 1)
        section, name = _locate(key.strip())
        data[section][name] = _parse_value(raw)
    return Config.from_dict(data, source=f"preset {preset} with overrides")


def _locate(key: str) -> tuple[str, str]:
    sections = {"model": ModelConfig, "train": TrainConfig, "pack": PackPolicy}
    if "." in key:
        section, name = key.split(".", 1)
        if section in sections and name in _field_types(sections[section]):
            return section, name
    else:
        hits = [s for s, c in sections.items() if key in _field_types(c)]
        if len(hits) == 1:
            return hits[0], key
    known = [f"{s}.{n}" for s, c in sections.items() for n in _field_types(c)]
    raise LmgolfError(f"unknown config key {key!r} (known: {', '.join(known)})")


def _parse_value(raw: str):
    try:
        return json.loads(raw)
    except json.JSONDecodeError:
        return raw


def _field_types(cls) -> dict[str, object]:
    hints = typing.get_type_hints(cls)
    return {f.name: hints[f.name] for f in dataclasses.fields(cls)}


def _build(cls, values: dict, source: str):
    if not isinstance(values, dict):
        raise LmgolfError(f"{source}: expected a JSON object")
    types_ = _field_types(cls)
    kwargs = {}
    for name, value in values.items():
        if name not in types_:
            raise LmgolfError(f"{source}: unknown config key {name!r} (known: {', '.join(types_)})")
        kwargs[name] = _coerce(value, types_[name], f"{source}.{name}")
    return cls(**kwargs)


def _coerce(value, annotation, where: str):
    options = typing.get_args(annotation) if isinstance(annotation, types.UnionType) else (annotation,)
    if value is None and type(None) in options:
        return None
    for kind in options:
        if kind is bool and isinstance(value, bool):
            return value
        if kind is int and isinstance(value, int) and not isinstance(value, bool):
            return value
        if kind is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if kind is str and isinstance(value, str):
            return value
        container, args = typing.get_origin(kind), typing.get_args(kind)
        if container is tuple and isinstance(value, (list, tuple)) and all(isinstance(v, str) for v in value):
            return tuple(value)
        if container is dict and isinstance(value, dict):
            return {str(k): _coerce(v, args[1], f"{where}[{k!r}]") for k, v in value.items()}
    names = " or ".join("null" if k is type(None) else getattr(k, "__name__", str(k)) for k in options)
    raise LmgolfError(f"{where}: expected {names}, got {value!r}")
