"""The sequence-length schedule (train.context_schedule) and batch-size warmup (train.batch_schedule), docs/training.md
"Length schedule and batch-size warmup": phases by budget fraction, tokens per step constant across lengths,
positions (learned or RoPE) working at every length, and a scheduled run that trains and resumes bitwise."""

import json

import numpy as np
import pytest
import torch

from conftest import interrupt_at, tiny_cfg
from lmgolf.config import Config, ModelConfig, TrainConfig
from lmgolf.data.loader import WindowSampler
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT
from lmgolf.training.checkpoint import load_model
from lmgolf.training.resume import resumed_config
from lmgolf.training.schedules import StepSchedule, phase_value, plan_batch
from lmgolf.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

LENGTHS = "8@0,16@0.25,32@0.5"  # with tiny_cfg: model.context=32, batch_tokens=256, micro_batch=4


def schedule_cfg(**train):
    return Config(model=ModelConfig(context=32), train=TrainConfig(batch_tokens=256, micro_batch=4, **train))


def step_records(run):
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if '"loss"' in line]


def same_weights(a, b):
    wa, wb = load_model(a)[0].state_dict(), load_model(b)[0].state_dict()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_phase_value_holds_from_each_fraction_to_the_next():
    phases = [(0.0, 8), (0.25, 16), (0.5, 32)]
    assert [phase_value(phases, f, None) for f in (0, 0.1, 0.2499, 0.25, 0.49, 0.5, 0.99)] == [8, 8, 8, 16, 16, 32, 32]
    assert phase_value([], 0.7, 32) == 32


def test_each_length_phase_keeps_the_tokens_per_step_and_the_micro_batch_tokens():
    schedule = StepSchedule(schedule_cfg(context_schedule=LENGTHS), world_size=1)
    for fraction, length in ((0.0, 8), (0.2, 8), (0.25, 16), (0.5, 32), (0.99, 32)):
        plan = schedule.plan_at(fraction)
        assert plan.seq_len == length and plan.tokens == 256
        assert plan.micro_batch * length == 4 * 32  # train.micro_batch full-length sequences' worth per forward
    assert [p.seq_len for p in schedule.plans_from(0.3)] == [16, 32]
    # without a schedule: exactly the old single plan
    assert StepSchedule(schedule_cfg(), 1).plan_at(0.7) == plan_batch(schedule_cfg(), 1)


def test_batch_warmup_scales_the_tokens_per_step_and_splits_into_micro_batches():
    cfg = schedule_cfg(batch_schedule="0.25@0,0.5@0.1,1@0.2", context_schedule="16@0,32@0.15")
    schedule = StepSchedule(cfg, world_size=2)
    got = [(f, schedule.plan_at(f)) for f in (0.0, 0.1, 0.15, 0.2, 0.9)]
    assert [(p.tokens, p.seq_len) for _, p in got] == [(64, 16), (128, 16), (128, 32), (256, 32), (256, 32)]
    for _, plan in got:
        assert plan.world_size == 2 and plan.micro_batch * plan.seq_len <= 4 * 32
        assert plan.micro_batch * plan.accum_steps * 2 * plan.seq_len == plan.tokens


@pytest.mark.parametrize("fields, fragment", [
    ({"context_schedule": "8@0,16@0.5"}, "train.context_schedule and model.context"),  # longest is not model.context
    ({"context_schedule": "64@0,32@0.5"}, "train.context_schedule and model.context"),
    ({"batch_schedule": "0.3@0"}, "train.context_schedule and train.batch_schedule: from 0 of the budget, 77 tokens"),
    ({"context_schedule": "24@0,32@0.5"}, "sequences of 24"),  # 256 tokens are not whole sequences of 24
])
def test_a_phase_that_cannot_be_planned_is_refused_naming_the_fields(fields, fragment):
    with pytest.raises(LmgolfError, match="^config field") as e:
        StepSchedule(schedule_cfg(**fields), world_size=1)
    assert fragment in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("field, value, fragment", [
    ("context_schedule", "256", "is not VALUE@FRACTION"),
    ("context_schedule", "8@0.1,32@0.5", "must start at 0"),
    ("context_schedule", "8@0,32@0", "increase"),
    ("context_schedule", "8@0,32@1", "below 1"),
    ("context_schedule", "0@0", "every length must be >= 1"),
    ("batch_schedule", "1.5@0", "fraction of train.batch_tokens"),
    ("batch_schedule", "x@0", "is not VALUE@FRACTION"),
])
def test_bad_schedules_are_one_line_errors_naming_the_field(field, value, fragment):
    with pytest.raises(LmgolfError) as e:
        TrainConfig(**{field: value}).validate()
    message = str(e.value)
    assert message.startswith(f"config field train.{field}: ") and fragment in message and "\n" not in message


def test_sampler_shapes_at_each_phase_and_ranks_share_the_global_batch():
    tokens = np.arange(5000)
    schedule = StepSchedule(schedule_cfg(context_schedule=LENGTHS), world_size=2)
    one = WindowSampler(tokens, 32, seed=3)
    ranks = [WindowSampler(tokens, 32, seed=3, rank=r, world_size=2) for r in range(2)]
    for fraction in (0.0, 0.3, 0.6):
        plan, single = schedule.plan_at(fraction), StepSchedule(schedule_cfg(context_schedule=LENGTHS), 1).plan_at(fraction)
        rows = []
        for r, sampler in enumerate(ranks):
            for micro in range(plan.accum_steps):
                x, y = sampler.batch(5, micro, plan.micro_batch, plan.accum_steps, plan.seq_len, fraction)
                assert x.shape == y.shape == (plan.micro_batch, plan.seq_len) and torch.equal(x[:, 1:], y[:, :-1])
                rows += x.tolist()
        everything = [one.batch(5, m, single.micro_batch, single.accum_steps, single.seq_len)[0].tolist()
                      for m in range(single.accum_steps)]
        assert sorted(rows) == sorted(sum(everything, []))
    with pytest.raises(LmgolfError, match="seq_len"):
        one.batch(0, 0, 2, 1, seq_len=33)


@pytest.mark.parametrize("positions", ["learned", "rope"])
def test_positions_work_at_every_length_the_schedule_uses(positions):
    """A causal model's logits on a prefix are the prefix of its logits on the whole window: the learned table's
    first rows (sized for the longest length) and RoPE's angles serve every length."""
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, n_layer=1, d_model=32, n_head=2, context=32, positions=positions)).eval()
    x = torch.randint(0, 50, (2, 32))
    with torch.no_grad():
        full = model(x)
        for length in (8, 16):
            assert torch.allclose(model(x[:, :length]), full[:, :length], atol=1e-5)


def test_a_scheduled_run_trains_with_constant_tokens_per_step(byte_data, tmp_path):
    cfg = tiny_cfg("train.max_steps=8", f"train.context_schedule={LENGTHS}", "model.positions=learned")
    summary = train(cfg, byte_data, tmp_path / "run", progress=False)
    steps = step_records(tmp_path / "run")
    assert [r["seq_len"] for r in steps] == [8, 8, 16, 16, 32, 32, 32, 32]
    assert [r["tokens"] for r in steps] == [256 * s for s in range(1, 9)] and summary["tokens"] == 8 * 256
    assert steps[-1]["loss"] < steps[0]["loss"]


def test_batch_warmup_run_counts_the_tokens_of_each_step(byte_data, tmp_path):
    cfg = tiny_cfg("train.max_steps=4", "train.batch_schedule=0.25@0,0.5@0.25,1@0.5")
    summary = train(cfg, byte_data, tmp_path / "run", progress=False)
    assert [r["tokens"] for r in step_records(tmp_path / "run")] == [64, 192, 448, 704]
    assert summary["tokens"] == 704


def test_resume_across_a_phase_change_equals_the_uninterrupted_run(byte_data, tmp_path):
    cfg = lambda: tiny_cfg("train.max_steps=8", "train.checkpoint_every=3",  # noqa: E731
                           f"train.context_schedule={LENGTHS}", "train.batch_schedule=0.5@0,1@0.5")
    full = train(cfg(), byte_data, tmp_path / "full", progress=False)
    interrupt_at(4, cfg(), byte_data, tmp_path / "cut")  # checkpoint at step 3 (length 16), phase changes at 4
    resumed = train(resumed_config(tmp_path / "cut", []), byte_data, tmp_path / "cut", resume=True, progress=False)
    assert resumed["tokens"] == full["tokens"] == 2 * 128 + 2 * 128 + 4 * 256
    assert same_weights(tmp_path / "cut", tmp_path / "full")
