"""Hugging Face export (lmgolf.serve.export_hf): transformers loads the folder with no custom code, as
LlamaForCausalLM or GPT2LMHeadModel as the config says, and gives the same logits (float32, max abs difference
< 1e-4; measured 0.0 to 3e-6 on CPU) and the same token ids for every lmgolf tokenizer kind; options with no
equivalent in the chosen class are refused in one line naming the config field."""

import json

import pytest
import torch

from conftest import assert_one_line_error, cli
from lmgolf.config import ModelConfig
from lmgolf.data.tokenizers import ByteTokenizer
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT
from lmgolf.serve.export_hf import MARKER, export_hf

transformers = pytest.importorskip("transformers", reason="the export extra (transformers) is not installed")

TOL = 1e-4
TEXT = "Héllo, wörld's <bos> <|endoftext|> 123  \n\n\ttabs 😀 end"
# for SentencePiece kinds: runs of spaces, leading and trailing whitespace, digits, NFKC-sensitive characters
SP_TEXT = TEXT + "  4567\n  lead   trail  \r\n½ ﬁ ① — ünïcödé\u00a0nbsp x  "
LLAMA = ["model.qk_norm=false", "model.q_gain=null", "model.mlp=swiglu", "model.embed_norm=false",
         "model.logit_softcap=null", "model.output_scales=false"]
GPT2 = dict(positions="learned", norm="layernorm", mlp="gelu")


def tiny(**kw) -> tuple[GPT, ModelConfig]:
    torch.manual_seed(0)
    cfg = ModelConfig(**{**dict(vocab_size=257, n_layer=2, d_model=64, n_head=4, n_kv_head=2, context=64), **kw})
    model = GPT(cfg).eval()
    with torch.no_grad():  # off the initialization, so that norms' gains and biases matter
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)
    return model, cfg


def assert_same_logits(model, out, vocab: int, cls: str = "LlamaForCausalLM"):
    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    assert type(hf).__name__ == cls
    idx = torch.randint(0, vocab, (2, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours, theirs = model(idx), hf(idx).logits.float()
    assert (ours - theirs).abs().max().item() < TOL


@pytest.mark.parametrize("kw", [
    dict(tie_embeddings=True),
    dict(tie_embeddings=False),
    dict(n_kv_head=1, head_dim=8, rope_base=500.0, norm_eps=1e-6, mlp_hidden=96),      # MQA, own head width
    dict(tie_embeddings=False, bias=True, ln_scale=True, norm_gain=False, n_kv_head=None),  # folded options
    dict(output_scales=True, bias=True),
    dict(mlp="relu2"), dict(mlp="gelu", bias=True, tie_embeddings=False),  # ungated: up(x) = 1 exactly
], ids=["tied", "untied", "mqa-head-dim", "bias-lnscale-nogain", "output-scales", "relu2", "gelu-bias"])
def test_same_logits_and_token_ids(tmp_path, kw):
    model, cfg = tiny(**kw)
    files = export_hf(model, cfg, ByteTokenizer(), tmp_path / "hf")
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= set(files)
    assert_same_logits(model, tmp_path / "hf", cfg.vocab_size)
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.encode(TEXT) == ByteTokenizer().encode(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT


@pytest.mark.parametrize("kw", [
    dict(),
    dict(tie_embeddings=False, bias=True, ln_scale=True, output_scales=True, n_kv_head=2),  # GQA expanded to MHA
    dict(positions="none", norm_gain=False, n_kv_head=1, norm_eps=1e-6, mlp_hidden=96),   # a zero position table
], ids=["tied", "untied-bias-gqa-folds", "nope-mqa-nogain"])
def test_gpt2_same_logits(tmp_path, kw):
    model, cfg = tiny(**{**GPT2, **kw})
    export_hf(model, cfg, ByteTokenizer(), tmp_path / "hf")
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "gpt2"
    assert_same_logits(model, tmp_path / "hf", cfg.vocab_size, "GPT2LMHeadModel")


def test_gpt2_token_ids(tmp_path):
    from lmgolf.data.tokenizers import gpt2_folders, train_gpt2
    pytest.importorskip("tiktoken")
    if not gpt2_folders():
        pytest.skip("no GPT-2 encoder.json/vocab.bpe (the gpt2 extra)")
    gpt2 = train_gpt2()
    model, cfg = tiny(vocab_size=gpt2.vocab_size, n_layer=1, d_model=32, n_head=2, n_kv_head=None)
    export_hf(model, cfg, gpt2, tmp_path / "hf")
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.encode(TEXT) == gpt2.encode(TEXT)
    assert tok.decode(tok.encode(TEXT)) == TEXT


@pytest.mark.parametrize("field,value", [
    ("smear_gate", True), ("bigram_buckets", 16), ("unet_skips", True), ("resid_mix", True),
    ("logit_softcap", 30.0), ("qk_norm", True), ("value_residual", True), ("attn_gate", "head"),
    ("diff_attn", True), ("ssm_layers", "1"), ("moe_experts", 2), ("depth_pattern", "0,1,0,1"),
    ("parallel_from", 1), ("norm_position", "post"), ("embed_rank", 16),
    ("embed_norm", True), ("rope_dims", 8), ("nope_every", 2), ("mlp", "leaky_relu2"),
    ("positions", "learned"), ("positions", "none"), ("norm", "layernorm"), ("family", "linear"),
    ("attn_softcap", 20.0), ("exclusive_attn", True), ("doc_mask", True),
])
def test_refused_options(tmp_path, field, value):
    extra = {"bos_id": 256} if field in ("doc_mask", "smear_gate", "bigram_buckets") else {}
    model, cfg = tiny(**{field: value}, **extra)
    with pytest.raises(LmgolfError) as e:
        export_hf(model, cfg, ByteTokenizer(), tmp_path / "hf")
    assert f"model.{field}" in str(e.value) and "\n" not in str(e.value)
    assert not (tmp_path / "hf").exists()


@pytest.mark.parametrize("field,value", [("norm", "rmsnorm"), ("mlp", "swiglu"), ("mlp", "relu2"), ("head_dim", 8),
                                         ("smear_gate", True), ("logit_softcap", 30.0)])
def test_gpt2_refused_options(tmp_path, field, value):
    model, cfg = tiny(**{**GPT2, field: value}, **({"bos_id": 256} if field == "smear_gate" else {}))
    with pytest.raises(LmgolfError) as e:
        export_hf(model, cfg, ByteTokenizer(), tmp_path / "hf")
    assert f"model.{field}" in str(e.value) and "GPT2LMHeadModel" in str(e.value) and "\n" not in str(e.value)


@pytest.fixture(scope="module")
def llama_run(byte_data, tmp_path_factory):
    from lmgolf.cli import main
    root = tmp_path_factory.mktemp("export")
    assert main(["train", "--preset", "cpu-demo", "--data", str(byte_data), "--out", str(root / "run"), "--max-steps", "2",
                 "--quiet", "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.context=32",
                 "train.batch_tokens=128", "train.micro_batch=4", *LLAMA]) == 0
    assert main(["pack", str(root / "run")]) == 0
    return root


def test_cli_run_folder_and_artifact(capsys, tmp_path, llama_run):
    from lmgolf import api
    for source in (llama_run / "run", llama_run / "run" / "model.lmg"):
        out = tmp_path / source.name
        code, stdout, err = cli(capsys, "export", "hf", source, "--out", out)
        assert code == 0, err
        assert "LlamaForCausalLM" in stdout and (out / MARKER).is_file()
        assert_same_logits(api.load(source, device="cpu").model, out, 256)
        code, _, err = cli(capsys, "export", "hf", source, "--out", out, "--no-tokenizer")  # an export: replaced
        assert code == 0, err
        assert not (out / "tokenizer.json").exists() and (out / "model.safetensors").is_file()


def test_cli_refuses(capsys, tmp_path, llama_run):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    code, _, err = cli(capsys, "export", "hf", llama_run / "run", "--out", mine)
    assert_one_line_error(code, err, "not an lmgolf export")
    assert (mine / "notes.txt").read_text() == "keep me" and len(list(mine.iterdir())) == 1
    code, _, err = cli(capsys, "export", "hf", llama_run / "run", "--out", llama_run / "run")
    assert_one_line_error(code, err, "not an lmgolf export")


def texts_for_tokenizers() -> list[str]:
    from conftest import make_text
    extra = "Some ünïcödé — text, 2024: ½ € 😀 tabs\there  and  spaces\n"
    return [make_text(300, seed=i) + extra for i in range(12)]


def hf_tokenizer(tokenizer, out):
    model, cfg = tiny(vocab_size=tokenizer.vocab_size, n_layer=1, d_model=32, n_head=2, n_kv_head=None)
    export_hf(model, cfg, tokenizer, out)
    return transformers.AutoTokenizer.from_pretrained(out)


@pytest.mark.parametrize("kind,vocab", [("bpe", 400), ("unigram", 400), ("char", None), ("word", 100)])
def test_trained_tokenizers_token_ids(tmp_path, kind, vocab):
    from lmgolf.data.tokenizers import train_tokenizer
    texts = texts_for_tokenizers()
    ours = train_tokenizer(kind, texts, vocab)
    theirs = hf_tokenizer(ours, tmp_path / "hf")
    for text in (SP_TEXT, texts[0], " x", "", "a\n\n"):
        assert theirs.encode(text) == ours.encode(text), text
    if not ours.lossy:
        assert theirs.decode(theirs.encode(SP_TEXT)) == SP_TEXT


def test_parameter_golf_sentencepiece_token_ids(tmp_path):
    """An existing SentencePiece model (nmt_nfkc character map, whitespace removal, byte fallback)."""
    from conftest import data_dir
    from lmgolf.data.tokenizers import read_sentencepiece
    model_file = (data_dir() or tmp_path) / "tokenizers" / "parameter-golf" / "fineweb_8192_bpe.model"
    if not model_file.is_file():
        pytest.skip("no Parameter Golf SentencePiece model (set LMGOLF_DATA_DIR)")
    ours = read_sentencepiece(model_file)
    theirs = hf_tokenizer(ours, tmp_path / "hf")
    sample = (model_file.parents[2] / "tinyshakespeare" / "input.txt")
    for text in (SP_TEXT, " x", "", sample.read_text()[:20_000] if sample.is_file() else "The end."):
        assert theirs.encode(text) == ours.encode(text)


def test_sentencepiece_setting_refused(tmp_path):
    import io

    import sentencepiece

    from lmgolf.data.tokenizers import SentencePieceTokenizer
    buffer = io.BytesIO()
    sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(texts_for_tokenizers()), model_writer=buffer,
                                             vocab_size=300, treat_whitespace_as_suffix=True, minloglevel=2)
    suffix = SentencePieceTokenizer("sentencepiece", buffer.getvalue(), "test")
    model, cfg = tiny(vocab_size=suffix.vocab_size)
    with pytest.raises(LmgolfError) as e:
        export_hf(model, cfg, suffix, tmp_path / "hf")
    assert "treat_whitespace_as_suffix" in str(e.value) and "--no-tokenizer" in str(e.value)
    assert "\n" not in str(e.value) and not (tmp_path / "hf").exists()


class Mystery(ByteTokenizer):
    kind = "mystery"


def test_unsupported_tokenizer(tmp_path):
    model, cfg = tiny()
    with pytest.raises(LmgolfError, match="'mystery' tokenizer.*--no-tokenizer"):
        export_hf(model, cfg, Mystery(), tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
    assert "tokenizer.json" not in export_hf(model, cfg, Mystery(), tmp_path / "hf", with_tokenizer=False)
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["model_type"] == "llama"


def test_cli_gguf(capsys, tmp_path, llama_run):
    gguf = pytest.importorskip("gguf", reason="the gguf extra is not installed")
    out = tmp_path / "model.gguf"
    for _ in range(2):  # the second run replaces the first export
        code, stdout, err = cli(capsys, "export", "gguf", llama_run / "run" / "model.lmg", "--out", out,
                                "--dtype", "f16")
        assert code == 0, err
        assert "GGUF" in stdout and "note:" not in stdout
    reader = gguf.GGUFReader(out)
    assert reader.fields["general.architecture"].contents() == "llama"
    assert reader.fields["tokenizer.ggml.model"].contents() == "gpt2"
    foreign = tmp_path / "notes.gguf"
    foreign.write_text("keep me")
    code, _, err = cli(capsys, "export", "gguf", llama_run / "run", "--out", foreign)
    assert_one_line_error(code, err, "not an lmgolf GGUF export")
    assert foreign.read_text() == "keep me"
