"""lmgolf's transformer as a `transformers` class: LlamaForCausalLM or GPT2LMHeadModel, chosen from the config.

RoPE models map onto Llama (RMSNorm, MHA/GQA/MQA, SwiGLU; a relu² or GELU MLP act(up(x)) as Llama's gated
act(gate(x)) * up(x) with gate = lmgolf's up and up(x) = 1: a zero weight and a bias of ones). Learned or no
positions map onto GPT-2 (LayerNorm, GELU, learned position table, all zeros for `positions=none`; GQA/MQA are
expanded to MHA by repeating each key/value head, which computes the same attention). Options folded exactly
into the weights: `norm_gain=false` (gains of one), `ln_scale` (the fixed factor times the norm's gain and bias),
`output_scales` (times the output projection's rows), `bias=false` for GPT-2 (zero biases). Any other option
that changes what the model computes is refused in one line naming its config field.
"""

from __future__ import annotations

import math

import torch

from lmgolf.config import ModelConfig

LLAMA, GPT2 = "LlamaForCausalLM", "GPT2LMHeadModel"
LLAMA_ACT = {"swiglu": "silu", "relu2": "relu2", "gelu": "gelu"}  # lmgolf's MLP -> Llama's hidden_act


def architecture(cfg: ModelConfig) -> str:
    """The class a config is exported to: Llama for RoPE, GPT-2 for learned (or no) positions."""
    return LLAMA if cfg.positions == "rope" else GPT2


def common_checks(cfg: ModelConfig) -> list[tuple[str, bool, str]]:
    """(field, is on, what it is) for the options neither class has."""
    layers = range(cfg.n_layer)
    return [
        ("family", cfg.family != "transformer", f"the {cfg.family!r} family is not a transformer"),
        ("norm_position", cfg.norm_position != "pre", f"{cfg.norm_position!r}-norm blocks"),
        ("embed_norm", cfg.embed_norm, "the embedding norm"),
        ("embed_rank", cfg.embed_rank is not None, "a factorized embedding"),
        ("bigram_buckets", cfg.bigram_buckets > 0, "BigramHash"),
        ("smear_gate", cfg.smear_gate, "SmearGate"),
        ("qk_norm", cfg.qk_norm, "QK-norm"),
        ("q_gain", cfg.q_gain is not None, "a learned query gain"),
        ("ssm_layers", bool(cfg.ssm_blocks), "selective SSM blocks"),
        ("moe_experts", cfg.moe_experts > 0, "a mixture of experts"),
        ("logit_softcap", cfg.logit_softcap is not None, "a logit soft-cap"),
        ("doc_mask", cfg.doc_mask, "document masking (attention stops at BOS inside a window)"),
        ("attn_softcap", cfg.attn_softcap is not None, "an attention soft-cap"),
        ("attn_gate", cfg.attn_gate != "none", "gated attention"),
        ("diff_attn", cfg.diff_attn, "differential attention"),
        ("value_residual", cfg.value_residual, "value residuals"),
        ("exclusive_attn", cfg.exclusive_attn, "exclusive attention"),
        ("parallel_from", cfg.parallel_from is not None and cfg.parallel_from < cfg.n_layer, "parallel blocks"),
        ("depth_pattern", cfg.layer_order != list(layers), "depth recurrence"),
        ("exit_threshold", bool(cfg.exit_depths) and cfg.exit_threshold > 0, "early exit at inference"),
        ("unet_skips", cfg.unet_skips, "U-Net skips"),
        ("resid_mix", cfg.resid_mix, "the residual mix with the embedding stream"),
    ]


def llama_checks(cfg: ModelConfig) -> list[tuple[str, bool, str]]:
    layers = range(cfg.n_layer)
    return [
        ("rope_dims", cfg.rope_dims is not None and cfg.rope_dims != cfg.head_size, "partial RoPE"),
        ("nope_every", bool(cfg.nope_every) and any((i + 1) % cfg.nope_every == 0 for i in layers),
         "layers without positional encoding"),
        ("norm", cfg.norm != "rmsnorm", f"{cfg.norm!r} (Llama, the class for RoPE models, uses RMSNorm)"),
        ("mlp", cfg.mlp not in LLAMA_ACT, f"the {cfg.mlp!r} MLP (Llama's MLP is act(gate(x)) * up(x) with a "
                                          f"transformers activation: {', '.join(LLAMA_ACT.values())})"),
    ]


def gpt2_checks(cfg: ModelConfig) -> list[tuple[str, bool, str]]:
    chosen = f"GPT-2, the class for model.positions={cfg.positions!r}"
    return [
        ("norm", cfg.norm != "layernorm", f"{cfg.norm!r} ({chosen}, uses LayerNorm)"),
        ("mlp", cfg.mlp != "gelu", f"the {cfg.mlp!r} MLP ({chosen}, has a GELU MLP)"),
        ("head_dim", cfg.head_size * cfg.n_head != cfg.d_model,
         f"head_dim {cfg.head_size} x {cfg.n_head} heads != d_model {cfg.d_model}"),
    ]


def refusal(cfg: ModelConfig) -> str | None:
    """The first option of `cfg` that its class cannot represent, as a one-line reason; None if all map.

    Every ModelConfig field is either mapped, folded into the weights, inert for a transformer with these
    settings (training, initialization, dropout, other families' fields), or refused here."""
    cls = architecture(cfg)
    checks = common_checks(cfg) + (llama_checks(cfg) if cls == LLAMA else gpt2_checks(cfg))
    for name, on, what in checks:
        if on:
            return f"config field model.{name}: {what} has no equivalent in transformers' {cls}; refusing to export"
    return None


def lmgolf_weights(model, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The model's float32 state dict with output scales folded into the output projections' rows."""
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    if cfg.output_scales:
        for i in range(cfg.n_layer):
            for scale, proj in (("attn_scale", "attn.proj"), ("mlp_scale", "mlp.proj")):
                s = sd.pop(f"blocks.{i}.{scale}")
                sd[f"blocks.{i}.{proj}.weight"] = sd[f"blocks.{i}.{proj}.weight"] * s[:, None]
                if cfg.bias:
                    sd[f"blocks.{i}.{proj}.bias"] = sd[f"blocks.{i}.{proj}.bias"] * s
    return sd


def norm_scale(cfg: ModelConfig, layer: int) -> float:
    return 1 / math.sqrt(layer + 1) if cfg.ln_scale else 1.0


def gain(sd: dict, name: str, cfg: ModelConfig, scale: float = 1.0) -> torch.Tensor:
    return sd.get(name, torch.ones(cfg.d_model)) * scale


def norm_bias(sd: dict, name: str, cfg: ModelConfig, scale: float = 1.0) -> torch.Tensor:
    return sd.get(name, torch.zeros(cfg.d_model)) * scale


def hf_config(cfg: ModelConfig, bos_id: int | None) -> dict:
    return llama_config(cfg, bos_id) if architecture(cfg) == LLAMA else gpt2_config(cfg, bos_id)


def hf_state_dict(model, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    sd = (llama_state_dict if architecture(cfg) == LLAMA else gpt2_state_dict)(model, cfg)
    return {k: v.contiguous().clone() for k, v in sd.items()}


# ---------------------------------------------------------------- Llama


def llama_config(cfg: ModelConfig, bos_id: int | None) -> dict:
    """config.json for LlamaForCausalLM (rope base written for transformers 4.x and 5.x)."""
    return {
        "architectures": [LLAMA], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.hidden,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size, "hidden_act": LLAMA_ACT[cfg.mlp], "max_position_embeddings": cfg.context,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": float(cfg.rope_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_base)}, "rope_scaling": None,
        "attention_bias": cfg.bias, "mlp_bias": cfg.bias or cfg.mlp != "swiglu", "attention_dropout": 0.0,
        "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": bos_id, "eos_token_id": None,
        "pad_token_id": None, "torch_dtype": "float32", "dtype": "float32", "use_cache": True,
    }


LLAMA_ATTENTION = [("attn.q", "self_attn.q_proj"), ("attn.k", "self_attn.k_proj"), ("attn.v", "self_attn.v_proj"),
                   ("attn.proj", "self_attn.o_proj")]
SWIGLU = [("mlp.gate", "mlp.gate_proj"), ("mlp.up", "mlp.up_proj"), ("mlp.proj", "mlp.down_proj")]


def ungated_mlp(sd: dict, src: str, dst: str, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """act(up(x)) as Llama's act(gate_proj(x)) * up_proj(x): gate_proj = lmgolf's up, up_proj(x) = 1 exactly."""
    up, proj = sd[src + "mlp.up.weight"], sd[src + "mlp.proj.weight"]
    return {dst + "mlp.gate_proj.weight": up,
            dst + "mlp.gate_proj.bias": sd.get(src + "mlp.up.bias", torch.zeros(cfg.hidden)),
            dst + "mlp.up_proj.weight": torch.zeros_like(up), dst + "mlp.up_proj.bias": torch.ones(cfg.hidden),
            dst + "mlp.down_proj.weight": proj,
            dst + "mlp.down_proj.bias": sd.get(src + "mlp.proj.bias", torch.zeros(cfg.d_model))}


def llama_state_dict(model, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The model's weights under LlamaForCausalLM's names, float32, norms' gains folded (gain x LN scale)."""
    sd = lmgolf_weights(model, cfg)
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"]}
    for i in range(cfg.n_layer):
        src, dst, scale = f"blocks.{i}.", f"model.layers.{i}.", norm_scale(cfg, i)
        out[dst + "input_layernorm.weight"] = gain(sd, src + "attn_norm.weight", cfg, scale)
        out[dst + "post_attention_layernorm.weight"] = gain(sd, src + "mlp_norm.weight", cfg, scale)
        for a, b in LLAMA_ATTENTION + (SWIGLU if cfg.mlp == "swiglu" else []):
            out[dst + b + ".weight"] = sd[src + a + ".weight"]
            if cfg.bias:
                out[dst + b + ".bias"] = sd[src + a + ".bias"]
        if cfg.mlp != "swiglu":
            out.update(ungated_mlp(sd, src, dst, cfg))
    out["model.norm.weight"] = gain(sd, "final_norm.weight", cfg)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return out


# ---------------------------------------------------------------- GPT-2


def gpt2_config(cfg: ModelConfig, bos_id: int | None) -> dict:
    """config.json for GPT2LMHeadModel: exact GELU ("gelu", not GPT-2's tanh "gelu_new"), no dropout."""
    return {
        "architectures": [GPT2], "model_type": "gpt2",
        "vocab_size": cfg.vocab_size, "n_embd": cfg.d_model, "n_layer": cfg.n_layer, "n_head": cfg.n_head,
        "n_inner": cfg.hidden, "n_positions": cfg.context, "activation_function": "gelu",
        "layer_norm_epsilon": cfg.norm_eps, "resid_pdrop": 0.0, "embd_pdrop": 0.0, "attn_pdrop": 0.0,
        "scale_attn_weights": True, "scale_attn_by_inverse_layer_idx": False, "reorder_and_upcast_attn": False,
        "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": bos_id, "eos_token_id": None,
        "pad_token_id": None, "torch_dtype": "float32", "dtype": "float32", "use_cache": True,
    }


def as_mha(w: torch.Tensor, cfg: ModelConfig) -> torch.Tensor:
    """Key/value weights (or biases) of n_kv heads repeated to n_head heads, as lmgolf's attention repeats them."""
    heads = w.view(cfg.kv_heads, cfg.head_size, *w.shape[1:])
    return heads.repeat_interleave(cfg.n_head // cfg.kv_heads, dim=0).reshape(cfg.n_head * cfg.head_size, *w.shape[1:])


def gpt2_state_dict(model, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The model's weights under GPT2LMHeadModel's names (Conv1D weights are (in, out): transposed), float32;
    absent biases are zeros, norms' LN scale folded into gain and bias, no positions a zero table."""
    sd = lmgolf_weights(model, cfg)
    d = cfg.d_model

    def bias(name: str, width: int) -> torch.Tensor:
        return sd.get(name, torch.zeros(width))

    positions = sd.get("pos_emb.weight", torch.zeros(cfg.context, d))
    out = {"transformer.wte.weight": sd["tok_emb.weight"], "transformer.wpe.weight": positions}
    for i in range(cfg.n_layer):
        src, dst, scale = f"blocks.{i}.", f"transformer.h.{i}.", norm_scale(cfg, i)
        for a, b in (("attn_norm", "ln_1"), ("mlp_norm", "ln_2")):
            out[dst + b + ".weight"] = gain(sd, src + a + ".weight", cfg, scale)
            out[dst + b + ".bias"] = norm_bias(sd, src + a + ".bias", cfg, scale)
        q, k, v = (sd[src + f"attn.{n}.weight"] for n in "qkv")
        qb, kb, vb = (bias(src + f"attn.{n}.bias", w.shape[0]) for n, w in zip("qkv", (q, k, v)))
        out[dst + "attn.c_attn.weight"] = torch.cat((q, as_mha(k, cfg), as_mha(v, cfg))).T
        out[dst + "attn.c_attn.bias"] = torch.cat((qb, as_mha(kb, cfg), as_mha(vb, cfg)))
        for a, b in (("attn.proj", "attn.c_proj"), ("mlp.up", "mlp.c_fc"), ("mlp.proj", "mlp.c_proj")):
            w = sd[src + a + ".weight"]
            out[dst + b + ".weight"] = w.T
            out[dst + b + ".bias"] = bias(src + a + ".bias", w.shape[0])
    out["transformer.ln_f.weight"] = gain(sd, "final_norm.weight", cfg)
    out["transformer.ln_f.bias"] = norm_bias(sd, "final_norm.bias", cfg)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return out
