"""Export to GGUF (llama.cpp) for the Llama mapping, through the `gguf` package.

The weights are the LlamaForCausalLM export's (lmgolf.serve.hf_architectures: the same refusals and folds)
under llama.cpp's tensor names, with the `llama` architecture's metadata. RoPE: lmgolf (like transformers'
rotate_half) rotates the pairs (i, i + d/2) of each head; llama.cpp's llama models rotate (2i, 2i + 1). So the
rows of each head of attn_q and attn_k (weights and biases) are permuted, as llama.cpp's own converter does for
Hugging Face checkpoints: row i of the first half goes to 2i, row i of the second half to 2i + 1. The scores
q.k are unchanged (tests/test_export_gguf.py checks it against an interleaved RoPE).

Tokenizer metadata: gpt2 as llama.cpp's `gpt2` BPE (GPT-2's tokens and merges); byte as the same model with
the 256 GPT-2 byte symbols and no merge that can fire (gguf cannot store an empty merge list, so it holds one
placeholder pair of multi-character symbols that never occur); SentencePiece BPE models with no normalization
(the trained bpe kind) as llama.cpp's `llama` (SPM) tokenizer: pieces, scores, types. The BOS id is BOS and EOS
(lmgolf's document delimiter). Other kinds: `tokenizer.ggml.model = none` (feed token ids), and the export says so.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from lmgolf.config import ModelConfig
from lmgolf.errors import LmgolfError
from lmgolf.runfiles import check_replaceable, temp_prefix, use_default_permissions
from lmgolf.serve.export_tokenizer import gpt2_vocab
from lmgolf.serve.hf_architectures import LLAMA, architecture, hf_state_dict, refusal

GGUF_TOKENIZER_KINDS = ("byte", "gpt2", "bpe")  # and sentencepiece models that sentencepiece_note accepts
SENTENCEPIECE_KINDS = ("bpe", "unigram", "sentencepiece")
DTYPES = ("f32", "f16")
PLACEHOLDER_MERGE = "<bos> <bos>"  # never fires: merges apply to symbols, and no symbol is "<bos>"
NAMES = {"self_attn.q_proj": "attn_q", "self_attn.k_proj": "attn_k", "self_attn.v_proj": "attn_v",
         "self_attn.o_proj": "attn_output", "mlp.gate_proj": "ffn_gate", "mlp.up_proj": "ffn_up",
         "mlp.down_proj": "ffn_down", "input_layernorm": "attn_norm", "post_attention_layernorm": "ffn_norm"}


def gguf_name(hf: str) -> str:
    """llama.cpp's name for a LlamaForCausalLM tensor name."""
    fixed = {"model.embed_tokens.weight": "token_embd.weight", "model.norm.weight": "output_norm.weight",
             "lm_head.weight": "output.weight"}
    if hf in fixed:
        return fixed[hf]
    _, _, layer, rest = hf.split(".", 3)  # model.layers.N.<module>.<weight|bias>
    module, kind = rest.rsplit(".", 1)
    return f"blk.{layer}.{NAMES[module]}.{kind}"


def rope_interleaved(w: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows of each head reordered from rotate-half pairs (i, i + d/2) to interleaved pairs (2i, 2i + 1)."""
    head = w.shape[0] // heads
    return w.reshape(heads, 2, head // 2, *w.shape[1:]).transpose(1, 2).reshape(w.shape)


def gguf_tensors(model, cfg: ModelConfig) -> dict[str, torch.Tensor]:
    """The float32 tensors under llama.cpp's names, q/k rows permuted for its RoPE."""
    out = {}
    for name, w in hf_state_dict(model, cfg).items():
        if ".self_attn.q_proj." in name:
            w = rope_interleaved(w, cfg.n_head)
        elif ".self_attn.k_proj." in name:
            w = rope_interleaved(w, cfg.kv_heads)
        out[gguf_name(name)] = w
    return out


def gguf_refusal(cfg: ModelConfig) -> str | None:
    if architecture(cfg) != LLAMA:
        return (f"config field model.positions: {cfg.positions!r} positions map onto GPT-2, and the GGUF export "
                "covers the Llama mapping only (RoPE + RMSNorm + SwiGLU); refusing to export")
    reason = refusal(cfg)
    if reason is None and cfg.mlp != "swiglu":
        return (f"config field model.mlp: the {cfg.mlp!r} MLP has no equivalent in llama.cpp's llama architecture "
                "(its MLP is SwiGLU); refusing to export")
    return reason


def sentencepiece_note(tokenizer) -> str | None:
    """Why a SentencePiece model does not map onto llama.cpp's `llama` (SPM) tokenizer, or None when it does:
    a BPE model with no character map and no whitespace removal (llama.cpp applies neither)."""
    from lmgolf.data.tokenizers import proto_fields
    from lmgolf.serve.export_tokenizer import SP_BPE, SP_UNIGRAM, sentencepiece_refusal
    spec = proto_fields(tokenizer.model)
    trainer, normalizer = proto_fields(spec.get(2, b"")), proto_fields(spec.get(3, b""))
    refused = sentencepiece_refusal(tokenizer.kind, spec, trainer)
    if refused:
        return refused
    if trainer.get(3, SP_UNIGRAM) != SP_BPE:
        return "unigram model (llama.cpp's SPM tokenizer merges by score, it does not search segmentations)"
    if normalizer.get(2):
        return "precompiled character map (llama.cpp's SPM tokenizer does not normalize)"
    if normalizer.get(4, 1):
        return "remove_extra_whitespaces"
    return None


def add_sentencepiece(writer, tokenizer) -> None:
    """llama.cpp's `llama` tokenizer: the pieces, their scores and types (byte pieces for byte fallback)."""
    import gguf

    from lmgolf.data.tokenizers import proto_fields
    sp = tokenizer.processor
    types = [gguf.TokenType.CONTROL if sp.is_control(i) else gguf.TokenType.UNKNOWN if sp.is_unknown(i)
             else gguf.TokenType.BYTE if sp.is_byte(i) else gguf.TokenType.UNUSED if sp.is_unused(i)
             else gguf.TokenType.NORMAL for i in range(sp.get_piece_size())]
    writer.add_tokenizer_model("llama")
    writer.add_token_list([sp.id_to_piece(i) for i in range(sp.get_piece_size())])
    writer.add_token_scores([sp.get_score(i) for i in range(sp.get_piece_size())])
    writer.add_token_types(types)
    writer.add_unk_token_id(sp.unk_id())
    writer.add_add_space_prefix(bool(proto_fields(proto_fields(tokenizer.model).get(3, b"")).get(3, 1)))


def add_tokenizer(writer, tokenizer) -> str | None:
    """Writes the tokenizer metadata; returns a note when the tokenizer does not map (then model = none)."""
    import gguf
    if tokenizer is None:
        writer.add_tokenizer_model("none")
        return None
    unmapped = None if tokenizer.kind in GGUF_TOKENIZER_KINDS else "kind"
    if tokenizer.kind in SENTENCEPIECE_KINDS:
        unmapped = sentencepiece_note(tokenizer)
    if unmapped:
        writer.add_tokenizer_model("none")
        what = "" if unmapped == "kind" else f" (its SentencePiece {unmapped})"
        return (f"the {tokenizer.kind!r} tokenizer{what} has no GGUF mapping here (byte, gpt2 and SentencePiece BPE "
                "map): written without one (tokenizer.ggml.model = none); feed token ids")
    if tokenizer.kind in SENTENCEPIECE_KINDS:
        add_sentencepiece(writer, tokenizer)
        add_special_ids(writer, tokenizer.bos_id)
        return None
    if tokenizer.kind == "gpt2":
        vocab, merges = gpt2_vocab(tokenizer)
        tokens = [None] * len(vocab)
        for token, i in vocab.items():
            tokens[i] = token
        merges = [f"{a} {b}" for a, b in merges]
    else:
        from lmgolf.data.tokenizers import gpt2_byte_symbols
        symbol = {b: c for c, b in gpt2_byte_symbols().items()}
        tokens, merges = [symbol[b] for b in range(256)] + ["<bos>"], [PLACEHOLDER_MERGE]
    types = [gguf.TokenType.CONTROL if i == tokenizer.bos_id else gguf.TokenType.NORMAL for i in range(len(tokens))]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    add_special_ids(writer, tokenizer.bos_id)
    return None


def add_special_ids(writer, bos_id: int) -> None:
    """BOS is also EOS: lmgolf's document delimiter ends a generation. llama.cpp prepends it, as lmgolf does."""
    writer.add_bos_token_id(bos_id)
    writer.add_eos_token_id(bos_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)


def add_model_metadata(writer, cfg: ModelConfig, dtype: str, source: str) -> None:
    import gguf
    writer.add_name(f"lmgolf export of {source}" if source else "lmgolf export")  # an early "lmgolf": ours
    writer.add_context_length(cfg.context)
    writer.add_embedding_length(cfg.d_model)
    writer.add_block_count(cfg.n_layer)
    writer.add_feed_forward_length(cfg.hidden)
    writer.add_head_count(cfg.n_head)
    writer.add_head_count_kv(cfg.kv_heads)
    writer.add_key_length(cfg.head_size)
    writer.add_value_length(cfg.head_size)
    writer.add_rope_dimension_count(cfg.head_size)
    writer.add_rope_freq_base(float(cfg.rope_base))
    writer.add_layer_norm_rms_eps(cfg.norm_eps)
    writer.add_vocab_size(cfg.vocab_size)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16 if dtype == "f16" else gguf.LlamaFileType.ALL_F32)


def is_lmgolf_gguf(head: bytes) -> bool:
    return head.startswith(b"GGUF") and b"lmgolf export" in head


def export_gguf(model, cfg: ModelConfig, tokenizer, out: str | Path, *, dtype: str = "f32", source: str = "",
                with_tokenizer: bool = True) -> list[str]:
    """Writes the GGUF file `out` (a new file or an earlier lmgolf export); returns notes (empty if none).
    dtype f16 stores the matrices in float16; norms stay float32, as llama.cpp expects."""
    import gguf
    reason = gguf_refusal(cfg)
    if reason:
        raise LmgolfError(reason)
    if dtype not in DTYPES:
        raise LmgolfError(f"dtype: {dtype!r} is not one of {', '.join(DTYPES)}")
    out = Path(out)
    check_replaceable(out, "GGUF export", is_lmgolf_gguf)
    tensors = gguf_tensors(model, cfg)
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=out.parent, prefix=temp_prefix(out.name), suffix=".tmp")
    os.close(fd)
    try:
        writer = gguf.GGUFWriter(tmp, "llama")
        add_model_metadata(writer, cfg, dtype, source)
        note = add_tokenizer(writer, tokenizer if with_tokenizer else None)
        for name, w in tensors.items():
            array = w.numpy().astype(np.float16 if dtype == "f16" and w.dim() == 2 else np.float32)
            writer.add_tensor(name, array)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
        writer.close()
        use_default_permissions(tmp)
        os.replace(tmp, out)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return [note] if note else []
