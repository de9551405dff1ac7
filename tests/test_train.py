import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import interrupt_at
from lmgolf.training.checkpoint import load_model, read_state
from lmgolf.config import load_config
from lmgolf.errors import LmgolfError
from lmgolf.training.trainer import train

TINY = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.context=32", "train.batch_tokens=256",
        "train.micro_batch=4", "train.log_every=1", "train.dtype=fp32", "train.eval_tokens=512"]


def tiny_cfg(*extra):
    return load_config("cpu-demo", TINY + list(extra))


def losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_step_budget_run_is_reproducible(byte_data, tmp_path):
    a = train(tiny_cfg("train.max_steps=5"), byte_data, tmp_path / "a", progress=False)
    b = train(tiny_cfg("train.max_steps=5"), byte_data, tmp_path / "b", progress=False)
    assert losses(tmp_path / "a") == losses(tmp_path / "b")
    assert a["val_loss"] == b["val_loss"] and a["steps"] == 5
    ma, _ = load_model(tmp_path / "a")
    mb, _ = load_model(tmp_path / "b")
    assert all(torch.equal(x, y) for x, y in zip(ma.state_dict().values(), mb.state_dict().values()))
    for name in ("config.json", "run.json", "summary.json", "tokenizer/tokenizer.json"):
        assert (tmp_path / "a" / name).is_file()
    record = json.loads((tmp_path / "a" / "run.json").read_text())
    assert {"code", "libraries", "hardware", "data", "command"} <= set(record)


@pytest.mark.parametrize("optimizer", ["muon", "adamw"])
def test_resume_continues_exactly(byte_data, tmp_path, optimizer):
    cfg = lambda: tiny_cfg("train.max_steps=8", "train.checkpoint_every=4", f"train.optimizer={optimizer}")  # noqa: E731
    train(cfg(), byte_data, tmp_path / "full", progress=False)

    interrupt_at(6, cfg(), byte_data, tmp_path / "cut")
    assert read_state(tmp_path / "cut")["step"] == 4
    train(cfg(), byte_data, tmp_path / "cut", resume=True, progress=False)
    full, cut = losses(tmp_path / "full"), losses(tmp_path / "cut")
    assert cut == full  # steps 5 and 6 ran twice, the resume dropped their first lines: each step once


def test_nan_loss_stops_with_intact_checkpoint(byte_data, tmp_path):
    holder = {}

    def poison(step):
        if step == 3:
            with torch.no_grad():
                holder["model"].tok_emb.weight.fill_(float("nan"))

    import lmgolf.training.trainer as train_module
    original = train_module.GPT

    def capture(cfg):
        holder["model"] = original(cfg)
        return holder["model"]

    train_module.GPT = capture
    try:
        with pytest.raises(LmgolfError, match="diverged: the loss is nan at step 4"):
            train(tiny_cfg("train.max_steps=10", "train.checkpoint_every=2"), byte_data, tmp_path / "r", progress=False, on_step=poison)
    finally:
        train_module.GPT = original
    assert read_state(tmp_path / "r")["step"] == 2
    model, _ = load_model(tmp_path / "r")
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_time_budget_stops_the_run(byte_data, tmp_path):
    summary = train(tiny_cfg("train.time_budget=2"), byte_data, tmp_path / "t", progress=False)
    assert 2 <= summary["elapsed"] < 10 and summary["steps"] > 1


def test_refuses_to_overwrite_a_run(byte_data, tmp_path):
    train(tiny_cfg("train.max_steps=1"), byte_data, tmp_path / "r", progress=False)
    with pytest.raises(LmgolfError, match="already there"):
        train(tiny_cfg("train.max_steps=1"), byte_data, tmp_path / "r", progress=False)


def test_two_processes_match_one_at_the_same_global_batch(byte_data, tmp_path):
    """torchrun with 2 CPU processes (gloo, accum 1) against 1 process (accum 2): same losses."""
    overrides = TINY + ["train.max_steps=3", "train.micro_batch=4"]
    train(load_config("cpu-demo", overrides), byte_data, tmp_path / "one", progress=False)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", "-m", "lmgolf",
           "train", "--preset", "cpu-demo", "--data", str(byte_data), "--out", str(tmp_path / "two"), "--quiet", *overrides]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    one, two = losses(tmp_path / "one"), losses(tmp_path / "two")
    assert len(one) == len(two) == 3
    assert one == pytest.approx(two, rel=1e-5)
    val_one, val_two = (json.loads((tmp_path / r / "summary.json").read_text()) for r in ("one", "two"))
    assert val_two["val_loss"] == pytest.approx(val_one["val_loss"], rel=1e-5)  # each rank scored half the windows
