"""Budget fitting: the size estimate lands within 2% of the real packed size, and the search finds the largest fit."""

import dataclasses

import pytest

from lmgolf.config import Config, ModelConfig, PackPolicy, load_config
from lmgolf.study.fit import estimate_packed_bytes, fit, sizing_model, variant
from lmgolf.packing.writer import code_bytes, pack
from lmgolf.data.tokenizers import train_tokenizer


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only contend


@pytest.fixture(scope="module")
def medium():
    cfg = Config(model=ModelConfig(vocab_size=512, n_layer=8, d_model=256, n_head=4, context=64, mlp="relu2",
                                   mlp_mult=2.0, zero_init_proj=True))  # 4.4 MB of int8 payload
    return sizing_model(cfg.model), cfg


@pytest.mark.parametrize("policy", [
    PackPolicy(codec="lzma", default_storage="int6-row", group_storage={"embedding": "int8-row"}),
    PackPolicy(codec="zstd", default_storage="int5-row", byte_shuffle=True, clip="std"),
    PackPolicy(codec="zlib", default_storage="ternary", min_quant_numel=4096),
    PackPolicy(codec="lzma", default_storage="int4-row", bit_pack=False, prune=0.2),
], ids=["int6-lzma", "int5-zstd-shuffle", "ternary", "int4-pruned"])
def test_estimate_is_within_two_percent(medium, policy, tmp_path):
    model, cfg = medium
    cfg = dataclasses.replace(cfg, pack=policy)
    tokenizer = train_tokenizer("byte", [])
    from lmgolf.packing.artifact import tokenizer_header
    header = {"config": cfg.to_dict(), "tokenizer": tokenizer_header(tokenizer)}
    estimate = estimate_packed_bytes(model, policy, header, sample_bytes=2 << 20)  # samples about half the blocks
    real = pack(model, cfg, tokenizer, tmp_path / "m.lmg", policy, allow_over_budget=True).artifact_bytes
    assert abs(estimate - real) / real < 0.02, (estimate, real)


def test_sizing_model_draws_zero_initialized_matrices(medium):
    model, _ = medium
    assert all(p.any() for p in model.parameters() if p.ndim >= 2)


def test_depth_search_finds_the_largest_that_fits():
    cfg = Config(model=ModelConfig(vocab_size=256, n_layer=2, d_model=64, n_head=2, context=32))
    code = code_bytes()
    sizes = {n: estimate_packed_bytes(sizing_model(variant(cfg.model, "depth", n)), cfg.pack, {"config": cfg.to_dict()})
             for n in range(1, 8)}
    budget = code + (sizes[5] + sizes[6]) // 2
    result = fit(cfg, budget, "depth")
    assert result.config.n_layer == 5 and result.best.fits
    assert all(c.fits == (c.estimate + code <= budget) for c in result.tried)
    assert fit(cfg, code + 100, "depth").best is None


def test_width_variant_keeps_head_size_and_ratio():
    cfg = load_config("pg-baseline").model  # 8 heads of 64, 4 key-value heads, no explicit mlp_hidden
    wide = variant(cfg, "width", 6)
    assert (wide.n_head, wide.n_kv_head, wide.head_size, wide.d_model) == (12, 6, 64, 768)
    assert wide.mlp_hidden is None  # mlp_mult still sizes the MLP
    wide.validate()


def test_width_variant_scales_an_explicit_mlp_hidden_to_a_multiple_of_8():
    cfg = load_config("pg-baseline", ["model.mlp_hidden=1020"]).model
    wide, narrow = variant(cfg, "width", 6), variant(cfg, "width", 1)
    assert (wide.d_model, wide.mlp_hidden) == (768, 1528)  # 1020 x 768/512 = 1530 -> 1528
    assert (narrow.d_model, narrow.mlp_hidden) == (128, 256)  # 1020 x 128/512 = 255 -> 256
    wide.validate()
    narrow.validate()


def test_fit_cli(capsys):
    from lmgolf.cli import main
    assert main(["fit", "--preset", "cpu-demo", "--budget", "1500000", "--no-verify", "model.n_layer=1"]) == 0
    out = capsys.readouterr().out
    assert "best: model.n_layer=" in out and "train it: lmgolf train --preset cpu-demo" in out
    assert main(["fit", "--preset", "cpu-demo", "--budget", "1000"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("lmgolf: error: fit: not even") and err.count("\n") == 1
    assert main(["fit", "--preset", "cpu-demo", "model.depth_pattern=0,1,0,1", "model.n_layer=2"]) == 2
    assert "depth_pattern" in capsys.readouterr().err


def test_fit_cli_verifies_the_preset_without_a_data_folder(capsys):
    from lmgolf.cli import main
    assert main(["fit", "--preset", "cpu-demo", "--budget", "1500000"]) == 0
    out = capsys.readouterr().out
    assert "verified: packed" in out and "best: model.n_layer=2" in out


def test_verify_without_a_tokenizer_packs_the_preset_as_configured(tmp_path):
    from lmgolf.study.fit import StandInTokenizer, verify
    cfg = load_config("cpu-demo")  # vocabulary 256: less than the byte tokenizer's 257
    result = verify(fit(cfg, 1_500_000, "depth"), cfg, cfg.pack)
    assert result.config.vocab_size == 256 and result.config.n_layer == 2
    real = pack(sizing_model(result.config), dataclasses.replace(cfg, model=result.config), StandInTokenizer(256),
                tmp_path / "m.lmg", allow_over_budget=True)
    assert result.packed_bytes == real.artifact_bytes


def test_a_tokenizer_sizes_the_model_with_its_vocabulary():
    from lmgolf.study.fit import verify
    cfg, tokenizer = load_config("cpu-demo"), train_tokenizer("byte", [])
    result = verify(fit(cfg, 1_500_000, "depth", tokenizer=tokenizer), cfg, cfg.pack, tokenizer)
    assert (result.config.vocab_size, result.config.bos_id) == (257, 256)  # as training builds it
    assert result.packed_bytes is not None and result.packed_bytes + result.code_bytes <= result.budget


def test_verify_steps_down_when_the_estimate_was_too_low():
    import dataclasses as dc

    from lmgolf.study.fit import Candidate, verify
    cfg = Config(model=ModelConfig(vocab_size=260, n_layer=2, d_model=64, n_head=2, context=32))
    code = code_bytes()
    real = fit(cfg, code + 400_000, "depth")
    assert real.best is not None
    optimistic = dc.replace(real, best=Candidate(real.best.value + 2, 0, 1, True))  # pretend two more layers fit
    checked = verify(optimistic, cfg, cfg.pack, train_tokenizer("byte", []))
    assert checked.config.n_layer <= real.best.value and checked.packed_bytes + code <= real.budget
