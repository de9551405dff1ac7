"""The pure parts of bench/vs_nanogpt.py: reading each side's step timings, nanoGPT's training clock,
the seed patch, and the one scorer's window loop."""

import json
import math
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))
from nanogpt_side import (ANCHOR, full_val_loss, lmgolf_step_rates, nanogpt_step_times,  # noqa: E402
                          nanogpt_train_clock, seeded_train_py)

NANOGPT_LOG = """Overriding: max_iters = 3
step 0: train loss 4.2000, val loss 4.2100
iter 0: loss 4.2001, time 812.50ms, mfu -100.00%
iter 1: loss 3.9000, time 10.00ms, mfu -100.00%
iter 2: loss 3.5000, time 12.00ms, mfu -100.00%
iter 3: loss 3.1000, time 11.00ms, mfu 1.20%
"""


def test_nanogpt_step_times_reads_every_iteration_line_in_seconds():
    assert nanogpt_step_times(NANOGPT_LOG) == [(0, 0.8125), (1, 0.010), (2, 0.012), (3, 0.011)]


def test_lmgolf_step_rates_reads_training_rows_only():
    rows = [{"step": 1, "loss": 4.0, "tok_s": 100.0}, {"step": 1, "val_loss": 4.1}, {"step": 2, "loss": 3.9, "tok_s": 250.5}]
    assert lmgolf_step_rates("\n".join(json.dumps(r) for r in rows) + "\n") == [(1, 100.0), (2, 250.5)]


def test_nanogpt_train_clock_counts_the_checkpointed_steps_with_evaluations_as_the_median_step():
    times = nanogpt_step_times(NANOGPT_LOG)  # iteration 0 evaluated; iteration 3 ran after the last checkpoint
    assert nanogpt_train_clock(times, eval_interval=3, iterations=3) == pytest.approx(0.011 + 0.010 + 0.012)


def test_nanogpt_train_clock_refuses_a_log_missing_iterations():
    with pytest.raises(SystemExit):
        nanogpt_train_clock(nanogpt_step_times(NANOGPT_LOG), eval_interval=3, iterations=10)


@pytest.mark.parametrize("n, context", [(100, 7), (65, 64), (129, 64), (2, 64)])
def test_full_val_loss_scores_every_target_once_with_its_own_input(n, context):
    vocab = 5
    ids = torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(n))
    bigram = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(1)).log_softmax(-1)
    loss, count = full_val_loss(lambda x: bigram[x], ids, context)  # the logits depend on the input token only
    assert count == n - 1
    assert loss == pytest.approx(-bigram[ids[:-1], ids[1:]].mean().item(), rel=1e-6)


def test_full_val_loss_of_a_uniform_model_is_log_vocab():
    loss, _ = full_val_loss(lambda x: torch.zeros(*x.shape, 11), torch.arange(200) % 11, 64)
    assert loss == pytest.approx(math.log(11))


@pytest.mark.skipif(not (ANCHOR / "train.py").is_file(), reason="no nanoGPT anchor")
def test_seed_patch_makes_the_seed_a_config_key_of_nanogpts_train_py():
    src = (ANCHOR / "train.py").read_text()
    patched = seeded_train_py(src, ANCHOR / "train.py")
    assert "torch.manual_seed(seed + seed_offset)" in patched and "1337 + seed_offset" not in patched
    assert patched.index("\nseed = 1337\n") < patched.index("config_keys")  # before the configurator reads the keys
    with pytest.raises(SystemExit):
        seeded_train_py(patched.replace("seed + seed_offset", "7 + seed_offset"), ANCHOR / "train.py")


def test_speed_refuses_bf16_in_one_line_where_the_cpu_emulates_it(monkeypatch):
    import vs_nanogpt
    monkeypatch.setattr(vs_nanogpt, "cpu_has_fast_bf16", lambda: False)
    with pytest.raises(SystemExit) as refused:
        vs_nanogpt.refuse_emulated_bf16("bf16")
    assert "\n" not in str(refused.value) and "emulate" in str(refused.value)
    vs_nanogpt.refuse_emulated_bf16("fp32")  # fp32 always runs
