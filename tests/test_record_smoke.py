"""A tiny pg-record-1.1207: every switch of the record stack on, trained a few steps, packed, scored two ways."""

import math

import pytest

from lmgolf import api
from lmgolf.config import load_config

# the preset's switches stay as they are; only sizes, the budget and GPTQ's calibration shrink
TINY_RECORD = {
    "model.d_model": 64, "model.n_head": 4, "model.n_kv_head": 2, "model.rope_dims": 8, "model.n_layer": 2,
    "model.mlp_hidden": 128, "model.context": 64, "model.bigram_buckets": 64, "model.bigram_dim": 16,
    "train.batch_tokens": 256, "train.micro_batch": 4, "train.time_budget": 0, "train.warmdown_steps": 2,
    "train.momentum_warmup_steps": 2, "train.swa_every": 1, "train.swa_start": 0.5, "train.qat_start": 0.5,
    "train.compile": "off", "train.dtype": "fp32", "train.device": "cpu", "train.log_every": 1,
    "train.eval_tokens": 512, "pack.min_quant_numel": 1024, "pack.gptq_tokens": 512,
}
STEPS = 4


def test_tiny_record_keeps_every_switch_of_the_preset():
    tiny = load_config("pg-record-1.1207", [f"{k}={v}" for k, v in TINY_RECORD.items()])
    m, t, p = tiny.model, tiny.train, tiny.pack
    assert m.kv_heads < m.n_head and m.rope_dims < m.head_size and m.mlp == "leaky_relu2"
    assert m.smear_gate and m.bigram_buckets and m.unet_skips and m.ln_scale and m.tie_embeddings
    assert t.ema_decay and t.swa_every and t.qat and t.warmdown_steps and t.export_weights == "ema"
    assert p.gptq and p.prune and p.codec == "lzma" and p.default_storage == "int6-row"


@pytest.fixture(scope="module")
def tiny_record(byte_data, tmp_path_factory, one_thread):
    run = api.train(tmp_path_factory.mktemp("record") / "run", preset="pg-record-1.1207", data=byte_data,
                    overrides=TINY_RECORD, max_steps=STEPS, progress=False)
    return run, api.pack(run)


def test_tiny_record_trains_packs_and_scores_sliding_and_ttt(tiny_record):
    run, report = tiny_record
    assert run.summary["steps"] == STEPS
    assert set(run.summary["variants"]) == {"raw", "ema", "swa"} and run.summary["export_weights"] == "ema"
    assert run.summary["qat_step"] is not None  # QAT switched on during the run
    assert report.fits() and run.artifact.is_file()
    sliding = api.score(run.artifact, mode="window", stride=16, max_tokens=1024, progress=False)
    ttt = api.score(run.artifact, mode="ttt", stride=16, max_tokens=1024, ttt={"chunk": 256, "steps": 1},
                    progress=False)
    for result in (sliding, ttt):
        assert math.isfinite(result.bpb) and 0 < result.bpb < 10  # a byte model a few steps in: under 10 bits
        assert result.tokens == 1024 and result.artifact_bytes == run.artifact.stat().st_size
    assert (sliding.mode, ttt.mode) == ("window", "ttt")
