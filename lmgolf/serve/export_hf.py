"""Export to Hugging Face `transformers`: a folder that `AutoModelForCausalLM.from_pretrained(DIR)` and
`AutoTokenizer.from_pretrained(DIR)` load with no custom code, giving the same logits and token ids.

The model maps onto `LlamaForCausalLM` when it is a pre-norm RMSNorm + full RoPE + SwiGLU transformer
(MHA/GQA/MQA, tied or untied head, with or without biases). Options that are folded exactly into the
weights: `norm_gain=false` (gains of one), `ln_scale` (the fixed factor times the gain). Any other option
that changes what the model computes is refused in one line naming its config field.

The tokenizer is written as a `tokenizer.json` (PreTrainedTokenizerFast) for the byte and gpt2 kinds;
other kinds are refused unless the export is asked for without a tokenizer. docs/export.md has the table.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

import torch

from lmgolf.config import ModelConfig
from lmgolf.errors import LmgolfError
from lmgolf.runfiles import atomic_write_bytes, atomic_write_text

MARKER = "lmgolf-export.json"  # written into every export folder: the sign that a folder may be replaced
WRITTEN = ("config.json", "generation_config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json",
           "special_tokens_map.json", MARKER)
TOKENIZER_KINDS = ("byte", "gpt2")


def refusal(cfg: ModelConfig) -> str | None:
    """The first option of `cfg` that LlamaForCausalLM cannot represent, as a one-line reason; None if all map.

    Every ModelConfig field is either mapped, folded into the weights, inert for a transformer with these
    settings (training, initialization, other families' fields), or refused here."""
    layers = range(cfg.n_layer)
    field_checks = [
        ("family", cfg.family != "transformer", f"the {cfg.family!r} family is not a transformer"),
        ("positions", cfg.positions != "rope", f"{cfg.positions!r} positions (only RoPE maps onto Llama; "
                                               "GPT-2 export is not implemented)"),
        ("rope_dims", cfg.rope_dims is not None and cfg.rope_dims != cfg.head_size, "partial RoPE"),
        ("nope_every", bool(cfg.nope_every) and any((i + 1) % cfg.nope_every == 0 for i in layers),
         "layers without positional encoding"),
        ("norm", cfg.norm != "rmsnorm", f"{cfg.norm!r} (Llama uses RMSNorm)"),
        ("norm_position", cfg.norm_position != "pre", f"{cfg.norm_position!r}-norm blocks"),
        ("embed_norm", cfg.embed_norm, "the embedding norm"),
        ("embed_rank", cfg.embed_rank is not None, "a factorized embedding"),
        ("bigram_buckets", cfg.bigram_buckets > 0, "BigramHash"),
        ("smear_gate", cfg.smear_gate, "SmearGate"),
        ("qk_norm", cfg.qk_norm, "QK-norm"),
        ("q_gain", cfg.q_gain is not None, "a learned query gain"),
        ("mlp", cfg.mlp != "swiglu", f"the {cfg.mlp!r} MLP (Llama's MLP is gated: act(gate(x)) * up(x))"),
        ("ssm_layers", bool(cfg.ssm_blocks), "selective SSM blocks"),
        ("moe_experts", cfg.moe_experts > 0, "a mixture of experts"),
        ("logit_softcap", cfg.logit_softcap is not None, "a logit soft-cap (LlamaForCausalLM has none)"),
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
        ("output_scales", cfg.output_scales, "learned output scales"),
    ]
    for name, on, what in field_checks:
        if on:
            return f"config field model.{name}: {what} has no equivalent in transformers' LlamaForCausalLM; refusing to export"
    return None


def llama_config(cfg: ModelConfig, bos_id: int | None) -> dict:
    """config.json for LlamaForCausalLM (rope base written for transformers 4.x and 5.x)."""
    return {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama",
        "vocab_size": cfg.vocab_size, "hidden_size": cfg.d_model, "intermediate_size": cfg.hidden,
        "num_hidden_layers": cfg.n_layer, "num_attention_heads": cfg.n_head, "num_key_value_heads": cfg.kv_heads,
        "head_dim": cfg.head_size, "hidden_act": "silu", "max_position_embeddings": cfg.context,
        "rms_norm_eps": cfg.norm_eps, "rope_theta": float(cfg.rope_base),
        "rope_parameters": {"rope_type": "default", "rope_theta": float(cfg.rope_base)}, "rope_scaling": None,
        "attention_bias": cfg.bias, "mlp_bias": cfg.bias, "attention_dropout": 0.0, "pretraining_tp": 1,
        "tie_word_embeddings": cfg.tie_embeddings, "bos_token_id": bos_id, "eos_token_id": None,
        "pad_token_id": None, "torch_dtype": "float32", "dtype": "float32", "use_cache": True,
    }


def llama_state_dict(model, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The model's weights under LlamaForCausalLM's names, float32, norms' gains folded (gain x LN scale)."""
    sd = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}
    out = {"model.embed_tokens.weight": sd["tok_emb.weight"]}

    def gain(name: str, scale: float) -> torch.Tensor:
        w = sd.get(name, torch.ones(cfg.d_model))
        return w * scale

    for i in range(cfg.n_layer):
        src, dst = f"blocks.{i}.", f"model.layers.{i}."
        scale = 1 / math.sqrt(i + 1) if cfg.ln_scale else 1.0
        out[dst + "input_layernorm.weight"] = gain(src + "attn_norm.weight", scale)
        out[dst + "post_attention_layernorm.weight"] = gain(src + "mlp_norm.weight", scale)
        names = [("attn.q", "self_attn.q_proj"), ("attn.k", "self_attn.k_proj"), ("attn.v", "self_attn.v_proj"),
                 ("attn.proj", "self_attn.o_proj"), ("mlp.gate", "mlp.gate_proj"), ("mlp.up", "mlp.up_proj"),
                 ("mlp.proj", "mlp.down_proj")]
        for a, b in names:
            out[dst + b + ".weight"] = sd[src + a + ".weight"]
            if cfg.bias:
                out[dst + b + ".bias"] = sd[src + a + ".bias"]
    out["model.norm.weight"] = gain("final_norm.weight", 1.0)
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = sd["head.weight"]
    return {k: v.contiguous().clone() for k, v in out.items()}


def tokenizer_files(tokenizer) -> dict[str, str]:
    """tokenizer.json and tokenizer_config.json for PreTrainedTokenizerFast, giving tokenizer.encode's ids.

    No special tokens are registered, so text that spells a special token is encoded as ordinary text, as
    lmgolf does; the BOS id is in the vocabulary (decodable) and in config.json as bos_token_id."""
    try:
        from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    except ImportError:
        raise LmgolfError("tokenizer: exporting it needs the `tokenizers` package (pip install 'lmgolf[export]'), "
                          "or export with --no-tokenizer") from None
    from lmgolf.data.tokenizers import gpt2_byte_symbols
    symbol = {b: c for c, b in gpt2_byte_symbols().items()}
    if tokenizer.kind == "byte":
        vocab = {symbol[b]: b for b in range(256)}
        vocab["<bos>"] = tokenizer.bos_id
        bpe, use_regex = models.BPE(vocab=vocab, merges=[]), False
    elif tokenizer.kind == "gpt2":
        vocab, merges = gpt2_vocab(tokenizer)
        bpe, use_regex = models.BPE(vocab=vocab, merges=merges), True
    else:
        raise LmgolfError(f"tokenizer: the {tokenizer.kind!r} tokenizer has no Hugging Face export here (only "
                          f"{', '.join(TOKENIZER_KINDS)}); export the model alone with --no-tokenizer")
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tok.decoder = decoders.ByteLevel()
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30,
              "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False}
    return {"tokenizer.json": tok.to_str(), "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}


def gpt2_vocab(tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's encoder.json and vocab.bpe, from the folder whose files the tokenizer was built from."""
    import hashlib

    from lmgolf.data.tokenizers import gpt2_folders
    for folder in gpt2_folders():
        encoder, merges = (folder / "encoder.json").read_bytes(), (folder / "vocab.bpe").read_bytes()
        if (hashlib.sha256(encoder).hexdigest(), hashlib.sha256(merges).hexdigest()) == tuple(tokenizer.hashes):
            lines = [line for line in merges.decode("utf-8").split("\n") if line and not line.startswith("#version")]
            return json.loads(encoder.decode("utf-8")), [tuple(line.split(" ")) for line in lines]
    raise LmgolfError("tokenizer: the GPT-2 encoder.json and vocab.bpe it was built from are not found; "
                      "export the model alone with --no-tokenizer")


def is_export_folder(out: Path) -> bool:
    try:
        return json.loads((out / MARKER).read_text()).get("format") == "lmgolf-hf-export"
    except (OSError, ValueError, AttributeError):
        return False


def check_out(out: Path) -> None:
    """Refuses an --out that is a file, or a non-empty folder that is not an earlier export."""
    if out.exists() and not out.is_dir():
        raise LmgolfError(f"{out}: exists and is not a folder; refusing to replace it")
    if out.is_dir() and any(out.iterdir()) and not is_export_folder(out):
        raise LmgolfError(f"{out}: a non-empty folder that is not an lmgolf export; refusing to write into it")


def export_hf(model, cfg: ModelConfig, tokenizer, out: str | Path, *, with_tokenizer: bool = True,
              source: str = "") -> list[str]:
    """Writes the Hugging Face folder `out`; returns the names of the files written."""
    reason = refusal(cfg)
    if reason:
        raise LmgolfError(reason)
    out = Path(out)
    check_out(out)
    files = {}
    if with_tokenizer:
        files.update(tokenizer_files(tokenizer))
    from safetensors.torch import save
    bos = getattr(tokenizer, "bos_id", None)
    files["config.json"] = json.dumps(llama_config(cfg, bos), indent=2) + "\n"
    files["generation_config.json"] = json.dumps({"bos_token_id": bos, "do_sample": True}, indent=2) + "\n"
    files["model.safetensors"] = save(llama_state_dict(model, cfg), metadata={"format": "pt"})
    files[MARKER] = json.dumps({"format": "lmgolf-hf-export", "architecture": "LlamaForCausalLM",
                                "source": source, "tokenizer": tokenizer.kind if with_tokenizer else None},
                               indent=2) + "\n"
    out.mkdir(parents=True, exist_ok=True)
    for name in WRITTEN:  # an earlier export's files that this one does not write (say, its tokenizer)
        if name not in files and (out / name).is_file():
            os.remove(out / name)
    for name in sorted(files, key=lambda n: n != MARKER):  # the marker first: a half-written export is ours
        data = files[name]
        (atomic_write_bytes if isinstance(data, bytes) else atomic_write_text)(out / name, data)
    return sorted(files)
