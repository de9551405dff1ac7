"""The recipe presets (docs/recipes.md): each loads, has the stated parameter count, and holds its source's values."""

import pytest

from lmgolf.config import load_preset
from lmgolf.model.count import count_config

BUDGET = 16_000_000

# parameters of each preset's model as configured (lmgolf.model.count; `lmgolf presets` prints the same)
PARAMS = {
    "pg-record-1.1207": 20_374_617,
    "nanogpt-shakespeare-char": 10_745_088,      # nanoGPT prints 10.65M: it leaves out the 98,304 positions
    "nanogpt-shakespeare-char-cpu": 804_096,     # nanoGPT prints 0.80M (795,904 without the positions)
    "cpu-golf-shakespeare": 664_968,             # at 67 ids: 65 characters, <bos>, <unk>
    "cpu-golf-web": 2_885_648,                   # at a BPE of 1,024
    "golf-plan-baseline": 17_059_912,            # = pg-baseline, the challenge baseline's 17.06M
    "golf-plan-recurrence": 7_875_616,
    "golf-plan-factorized": 16_732_232,
    "golf-plan-qat2": 17_059_912,
    "golf-plan-distill": 17_059_912,
    "golf-plan-curriculum": 17_059_912,
}


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_preset_loads_with_its_stated_parameter_count(name):
    assert count_config(load_preset(name).model).params == PARAMS[name]


def test_pg_record_holds_the_seed_stack():
    cfg = load_preset("pg-record-1.1207")
    m, t, p = cfg.model, cfg.train, cfg.pack
    assert (m.vocab_size, m.n_head, m.kv_heads, m.head_size, m.rope_dims) == (8192, 8, 4, 64, 16)
    assert (m.mlp, m.leaky_slope, m.bigram_buckets, m.bigram_dim) == ("leaky_relu2", 0.5, 4096, 64)
    assert m.smear_gate and m.unet_skips and m.ln_scale and m.tie_embeddings and m.context == 2048
    assert (t.ema_decay, t.swa_every, t.warmdown_steps, t.qat) == (0.997, 50, 3500, True)
    assert p.gptq and p.default_storage == "int6-row" and p.codec == "lzma" and p.prune > 0


def test_nanogpt_presets_match_nanogpts_config():
    gpu, cpu = load_preset("nanogpt-shakespeare-char"), load_preset("nanogpt-shakespeare-char-cpu")
    for cfg in (gpu, cpu):
        m, t = cfg.model, cfg.train
        assert (m.positions, m.norm, m.mlp, m.bias, m.tie_embeddings) == ("learned", "layernorm", "gelu", False, True)
        assert (t.optimizer, t.lr, t.beta1, t.beta2, t.weight_decay, t.grad_clip) == ("adamw", 1e-3, 0.9, 0.99, 0.1, 1.0)
        assert (t.decay, t.min_lr_frac) == ("cosine", 0.1)  # cosine from 1e-3 to min_lr 1e-4
    assert (gpu.model.n_layer, gpu.model.d_model, gpu.model.n_head, gpu.model.context) == (6, 384, 6, 256)
    assert (gpu.train.batch_tokens // gpu.model.context, gpu.train.max_steps, gpu.model.dropout) == (64, 5000, 0.2)
    assert gpu.train.warmup * gpu.train.max_steps == pytest.approx(100)
    assert (cpu.model.n_layer, cpu.model.d_model, cpu.model.n_head, cpu.model.context) == (4, 128, 4, 64)
    assert (cpu.train.batch_tokens // cpu.model.context, cpu.train.max_steps, cpu.model.dropout) == (12, 2000, 0.0)
    assert cpu.train.warmup * cpu.train.max_steps == pytest.approx(100)


def test_golf_plan_arms_differ_from_the_baseline_in_their_switch_only():
    base = load_preset("golf-plan-baseline").to_dict()
    changed = {"recurrence": {"model.n_layer", "model.depth_pattern"}, "factorized": {"model.embed_rank"},
               "qat2": {"train.qat", "pack.default_storage", "pack.group_storage", "pack.codec"},
               "distill": {"train.teacher"}, "curriculum": {"train.curriculum"}}
    for arm, keys in changed.items():
        cfg = load_preset(f"golf-plan-{arm}").to_dict()
        diff = {f"{s}.{k}" for s in ("model", "train", "pack") for k in base[s] if base[s][k] != cfg[s][k]}
        assert diff == keys, arm
    recurrence = load_preset("golf-plan-recurrence").model
    assert recurrence.layer_order == [0, 1, 2, 3] * 3  # 4 blocks x 3 passes


@pytest.mark.slow
def test_pg_record_fit_estimate_is_under_the_budget():
    """`lmgolf fit`'s estimate for the preset's model at init, with the plain runner counted as code."""
    from lmgolf.packing.artifact import tokenizer_header
    from lmgolf.packing.writer import code_bytes
    from lmgolf.study.fit import estimate_packed_bytes, sized_as_trained, sizing_model
    cfg, tokenizer = sized_as_trained(load_preset("pg-record-1.1207"))
    header = {"config": cfg.to_dict(), "tokenizer": tokenizer_header(tokenizer)}
    estimate = estimate_packed_bytes(sizing_model(cfg.model), cfg.pack, header)
    assert estimate + code_bytes("plain") < BUDGET
