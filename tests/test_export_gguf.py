"""GGUF export (lmgolf.serve.export_gguf): llama.cpp's tensor names and llama metadata, read back with the gguf
package's reader (names, shapes, values, metadata); q/k rows permuted so that llama.cpp's interleaved RoPE gives
the same attention scores as lmgolf's rotate-half RoPE; non-Llama models refused in one line naming the field."""

import numpy as np
import pytest
import torch

from lmgolf.config import ModelConfig
from lmgolf.data.tokenizers import ByteTokenizer, CharTokenizer
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT
from lmgolf.model.positions import Rotary
from lmgolf.serve.export_gguf import PLACEHOLDER_MERGE, export_gguf, gguf_tensors, rope_interleaved

gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed")
pytest.importorskip("safetensors", reason="the export extra is not installed")


def tiny(**kw):
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=257, n_layer=2, d_model=32, n_head=4, n_kv_head=2, context=32,
                                tie_embeddings=False, bias=True, rope_base=500.0, norm_eps=1e-6), **kw})
    model = GPT(cfg).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, cfg


def expected_names(n_layer: int, untied: bool, bias: bool) -> set[str]:
    names = {"token_embd.weight", "output_norm.weight"} | ({"output.weight"} if untied else set())
    for i in range(n_layer):
        names |= {f"blk.{i}.{t}.weight" for t in ("attn_norm", "ffn_norm", "attn_q", "attn_k", "attn_v",
                                                   "attn_output", "ffn_gate", "ffn_up", "ffn_down")}
        if bias:
            names |= {f"blk.{i}.{t}.bias" for t in ("attn_q", "attn_k", "attn_v", "attn_output", "ffn_gate",
                                                     "ffn_up", "ffn_down")}
    return names


def field(reader, key):
    return reader.fields[key].contents()


def test_round_trip_names_shapes_values_metadata(tmp_path):
    model, cfg = tiny()
    assert export_gguf(model, cfg, ByteTokenizer(), tmp_path / "m.gguf", source="tiny") == []
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == expected_names(2, untied=True, bias=True)
    want = gguf_tensors(model, cfg)
    for name, t in tensors.items():
        assert t.tensor_type == gguf.GGMLQuantizationType.F32
        assert tuple(t.data.shape) == tuple(want[name].shape)  # PyTorch (out, in) order; GGUF stores (in, out)
        assert np.array_equal(t.data, want[name].numpy())
    assert tuple(tensors["blk.0.attn_k.weight"].shape) == (32, 2 * 8)  # ne: (in, out)
    assert np.array_equal(tensors["token_embd.weight"].data, model.tok_emb.weight.detach().numpy())
    expected = {"general.architecture": "llama", "llama.context_length": 32, "llama.embedding_length": 32,
                "llama.block_count": 2, "llama.feed_forward_length": cfg.hidden, "llama.attention.head_count": 4,
                "llama.attention.head_count_kv": 2, "llama.rope.dimension_count": 8, "llama.vocab_size": 257,
                "llama.attention.key_length": 8, "llama.attention.value_length": 8,
                "tokenizer.ggml.model": "gpt2", "tokenizer.ggml.pre": "gpt-2", "tokenizer.ggml.bos_token_id": 256,
                "tokenizer.ggml.eos_token_id": 256, "general.name": "lmgolf export of tiny"}
    for key, value in expected.items():
        assert field(reader, key) == value, key
    assert field(reader, "llama.rope.freq_base") == pytest.approx(500.0)
    assert field(reader, "llama.attention.layer_norm_rms_epsilon") == pytest.approx(1e-6)
    tokens = field(reader, "tokenizer.ggml.tokens")
    assert len(tokens) == 257 and tokens[256] == "<bos>" and tokens[ord("a")] == "a" and tokens[32] == "Ġ"
    assert field(reader, "tokenizer.ggml.merges") == [PLACEHOLDER_MERGE]
    assert field(reader, "tokenizer.ggml.token_type")[256] == gguf.TokenType.CONTROL


def test_f16_tied_no_bias(tmp_path):
    model, cfg = tiny(tie_embeddings=True, bias=False)
    export_gguf(model, cfg, ByteTokenizer(), tmp_path / "m.gguf", dtype="f16")
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    tensors = {t.name: t for t in reader.tensors}
    assert set(tensors) == expected_names(2, untied=False, bias=False)  # llama.cpp reuses token_embd as output
    want = gguf_tensors(model, cfg)
    for name, t in tensors.items():
        matrix = want[name].dim() == 2
        assert t.tensor_type == (gguf.GGMLQuantizationType.F16 if matrix else gguf.GGMLQuantizationType.F32)
        assert np.array_equal(t.data, want[name].numpy().astype(np.float16 if matrix else np.float32))
    assert field(reader, "general.file_type") == gguf.LlamaFileType.MOSTLY_F16


def interleaved_rope(x: torch.Tensor, base: float) -> torch.Tensor:
    """llama.cpp's RoPE for llama models: pairs (2i, 2i + 1) rotated by position * base^(-2i/d)."""
    d = x.size(-1)
    angles = torch.outer(torch.arange(x.size(-2), dtype=torch.float32), base ** (-torch.arange(0, d, 2) / d))
    x1, x2 = x[..., 0::2], x[..., 1::2]
    out = torch.stack((x1 * angles.cos() - x2 * angles.sin(), x1 * angles.sin() + x2 * angles.cos()), dim=-1)
    return out.flatten(-2)


def test_permuted_qk_give_the_same_scores_under_interleaved_rope():
    model, cfg = tiny(n_kv_head=None)
    x = torch.randn(10, cfg.d_model)
    attn = model.blocks[0].attn
    rotary = Rotary(cfg.head_size, cfg.rope_base)

    def heads(t):  # (time, heads * hd) -> (heads, time, hd)
        return t.view(10, cfg.n_head, cfg.head_size).transpose(0, 1)

    with torch.no_grad():
        q, k = heads(attn.q(x)), heads(attn.k(x))
        ours = rotary(q[None])[0] @ rotary(k[None])[0].transpose(-1, -2)
        wq, wk = rope_interleaved(attn.q.weight, cfg.n_head), rope_interleaved(attn.k.weight, cfg.n_head)
        bq, bk = rope_interleaved(attn.q.bias, cfg.n_head), rope_interleaved(attn.k.bias, cfg.n_head)
        q2, k2 = heads(x @ wq.T + bq), heads(x @ wk.T + bk)
        theirs = interleaved_rope(q2, cfg.rope_base) @ interleaved_rope(k2, cfg.rope_base).transpose(-1, -2)
        unpermuted = interleaved_rope(q, cfg.rope_base) @ interleaved_rope(k, cfg.rope_base).transpose(-1, -2)
    assert torch.allclose(ours, theirs, atol=1e-5)
    assert not torch.allclose(ours, unpermuted, atol=1e-3)  # the permutation is needed


@pytest.mark.parametrize("kw,field_name", [(dict(positions="learned", norm="layernorm", mlp="gelu"), "positions"),
                                           (dict(smear_gate=True, bos_id=256), "smear_gate"),
                                           (dict(mlp="relu2"), "mlp")])
def test_refused(tmp_path, kw, field_name):
    model, cfg = tiny(**kw)
    with pytest.raises(LmgolfError) as e:
        export_gguf(model, cfg, ByteTokenizer(), tmp_path / "m.gguf")
    assert f"model.{field_name}" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "m.gguf").exists()


@pytest.mark.parametrize("kind", ["char", "unigram"])
def test_tokenizer_without_mapping_is_noted(tmp_path, kind):
    from conftest import make_text
    from lmgolf.data.tokenizers import train_tokenizer
    tokenizer = (CharTokenizer(list("abcdef")) if kind == "char"
                 else train_tokenizer("unigram", [make_text(300, seed=i) for i in range(8)], 300))
    model, cfg = tiny(vocab_size=tokenizer.vocab_size)
    notes = export_gguf(model, cfg, tokenizer, tmp_path / "m.gguf")
    assert len(notes) == 1 and f"'{kind}' tokenizer" in notes[0] and "none" in notes[0] and "\n" not in notes[0]
    assert kind != "unigram" or "unigram model" in notes[0]
    assert field(gguf.GGUFReader(tmp_path / "m.gguf"), "tokenizer.ggml.model") == "none"


def test_llama_cpp_logits(tmp_path):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed")
    model, cfg = tiny(vocab_size=257, tie_embeddings=False, bias=False)
    export_gguf(model, cfg, ByteTokenizer(), tmp_path / "m.gguf")
    llm = llama_cpp.Llama(model_path=str(tmp_path / "m.gguf"), n_ctx=cfg.context, logits_all=True, verbose=False)
    ids = [256] + list(b"Hello, world")
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[:len(ids)]), dtype=torch.float32)
    with torch.no_grad():
        ours = model(torch.tensor([ids]))[0]
    assert (ours - theirs).abs().max().item() < 1e-3


def test_sentencepiece_bpe_tokenizer_metadata(tmp_path):
    from conftest import make_text
    from lmgolf.data.tokenizers import train_tokenizer
    bpe = train_tokenizer("bpe", [make_text(300, seed=i) for i in range(8)], 300)
    model, cfg = tiny(vocab_size=bpe.vocab_size)
    assert export_gguf(model, cfg, bpe, tmp_path / "m.gguf") == []
    reader = gguf.GGUFReader(tmp_path / "m.gguf")
    sp = bpe.processor
    assert field(reader, "tokenizer.ggml.model") == "llama"
    assert field(reader, "tokenizer.ggml.tokens") == [sp.id_to_piece(i) for i in range(sp.get_piece_size())]
    assert field(reader, "tokenizer.ggml.scores") == pytest.approx([sp.get_score(i) for i in range(bpe.vocab_size)])
    types = field(reader, "tokenizer.ggml.token_type")
    assert types[sp.unk_id()] == gguf.TokenType.UNKNOWN and types[bpe.bos_id] == gguf.TokenType.CONTROL
    assert types[sp.piece_to_id("<0x41>")] == gguf.TokenType.BYTE and types[-1] == gguf.TokenType.NORMAL
    assert field(reader, "tokenizer.ggml.add_space_prefix") is False
    assert field(reader, "tokenizer.ggml.bos_token_id") == bpe.bos_id


def test_api_refuses_a_bad_dtype_before_loading(tmp_path):
    from lmgolf import api
    with pytest.raises(api.ArgumentError, match="export_gguf dtype.*'q4'"):
        api.export_gguf(tmp_path / "no-such-run", tmp_path / "m.gguf", dtype="q4")
