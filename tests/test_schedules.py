"""The schedule's options (docs/training.md, "The schedule"): cosine decay, a warmdown in steps (also under a
time budget, by the mean step time), Muon's momentum warmup, and Muon's decoupled weight decay."""

import itertools
import math
import shutil

import pytest
import torch

import lmgolf.training.trainer as trainer
from conftest import tiny_cfg, interrupt_at
from lmgolf.config import TrainConfig, load_config
from lmgolf.errors import LmgolfError
from lmgolf.training.checkpoint import load_model, read_state
from lmgolf.training.optim import Muon, lr_multiplier, muon_momentum, warmdown_fraction
from lmgolf.training.resume import refuse_frozen_changes, resumed_config
from lmgolf.training.trainer import train


pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture
def fake_clock(monkeypatch):
    """Every training step takes exactly 0.5 s: the trainer reads the clock once before and once after a step."""
    ticks = itertools.count(0.0, 0.5)
    monkeypatch.setattr(trainer, "_now", lambda device: next(ticks))


@pytest.fixture
def recorder(monkeypatch):
    """Per optimizer step: (step, the Muon group's lr / its initial lr, the Muon group's momentum), read from the
    optimizer the trainer built, in on_step (right after the step that used them)."""
    built, seen = [], []
    real = trainer.build_optimizers

    def build(*a, **kw):
        built[:] = real(*a, **kw)
        return built

    monkeypatch.setattr(trainer, "build_optimizers", build)

    def on_step(step):
        group = next(o for o in built if isinstance(o, Muon)).param_groups[0]
        seen.append((step, group["lr"] / group["initial_lr"], group["momentum"]))

    return on_step, seen


def weights(run_dir):
    return load_model(run_dir)[0].state_dict()


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# --- the multiplier ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("warmup, min_frac", [(0.0, 0.0), (0.1, 0.0), (0.2, 0.1)])
def test_cosine_equals_the_formula_over_everything_after_the_warmup(warmup, min_frac):
    t = TrainConfig(decay="cosine", warmup=warmup, warmdown=0.3, min_lr_frac=min_frac)
    for p in (warmup, warmup + 0.05, 0.3, 0.5, 0.77, 0.9, 0.999, 1.0):
        u = (p - warmup) / (1 - warmup)
        assert lr_multiplier(p, t) == pytest.approx(min_frac + (1 - min_frac) * 0.5 * (1 + math.cos(math.pi * u)))
    assert lr_multiplier(warmup, t) == pytest.approx(1.0)
    assert lr_multiplier(1.0, t) == pytest.approx(min_frac)
    if warmup:  # the warmup ramp is the linear one's
        assert lr_multiplier(warmup / 2, t) == lr_multiplier(warmup / 2, TrainConfig(warmup=warmup))


def test_linear_default_is_unchanged():
    """Golden values of the linear schedule (the formula before train.decay existed)."""
    def old(p, c):
        if c.warmup > 0 and p < c.warmup:
            return max(p / c.warmup, 1e-3)
        if c.warmdown > 0 and p > 1 - c.warmdown:
            return c.min_lr_frac + (1 - c.min_lr_frac) * max(0.0, 1 - p) / c.warmdown
        return 1.0
    assert TrainConfig().decay == "linear" and TrainConfig().warmdown_steps == 0
    for cfg in (TrainConfig(), TrainConfig(warmup=0.1, warmdown=0.5, min_lr_frac=0.1), TrainConfig(warmdown=0),
                tiny_cfg().train, load_config("pg-baseline").train):
        assert warmdown_fraction(cfg, 7, 3.0) == cfg.warmdown
        for p in [i / 40 for i in range(41)] + [0.0001, 0.8000001, 0.99999]:
            assert lr_multiplier(p, cfg) == old(p, cfg)
            assert lr_multiplier(p, cfg, warmdown_fraction(cfg, 3, 1.0)) == old(p, cfg)
    assert lr_multiplier(0.9, TrainConfig()) == pytest.approx(0.5)


def test_warmdown_fraction_from_steps():
    assert warmdown_fraction(TrainConfig(max_steps=10000, warmdown_steps=3500), 0, 0.0) == 0.35
    t = TrainConfig(time_budget=600, warmdown_steps=3500)
    assert warmdown_fraction(t, 0, 0.0) == 0.0  # nothing measured yet
    assert warmdown_fraction(t, 1000, 60.0) == pytest.approx(3500 * 0.06 / 600)
    both = TrainConfig(max_steps=20000, time_budget=600, warmdown_steps=3500)  # the budget that ends first
    assert warmdown_fraction(both, 1000, 60.0) == pytest.approx(0.35)
    assert warmdown_fraction(both, 1000, 6.0) == pytest.approx(3500 / 20000)
    assert warmdown_fraction(TrainConfig(max_steps=100, warmdown_steps=500), 0, 0.0) == 1.0


def test_muon_momentum_warmup_values():
    t = TrainConfig(momentum=0.95, momentum_start=0.85, momentum_warmup_steps=500)
    assert muon_momentum(0, t) == 0.85
    assert muon_momentum(250, t) == pytest.approx(0.90)
    assert muon_momentum(500, t) == pytest.approx(0.95) and muon_momentum(10_000, t) == pytest.approx(0.95)
    assert muon_momentum(123, TrainConfig()) == 0.95  # off by default


# --- real tiny runs ---------------------------------------------------------------------------------------------

def test_warmdown_steps_with_a_step_budget_is_a_linear_ramp_over_the_last_steps(byte_data, tmp_path, recorder):
    on_step, seen = recorder
    train(tiny_cfg("train.max_steps=10", "train.warmdown_steps=4", "train.warmup=0"), byte_data, tmp_path / "r",
          progress=False, on_step=on_step)
    mults = [m for _, m, _ in seen]
    assert mults[:7] == pytest.approx([1.0] * 7)  # steps taken at 0..6 done
    assert mults[6:] == pytest.approx([4 / 4, 3 / 4, 2 / 4, 1 / 4])  # at (max_steps - s) / N for the last N


def test_warmdown_steps_under_a_time_budget_starts_at_the_estimated_step(byte_data, tmp_path, recorder, fake_clock):
    """0.5 s a step, 5 s: 10 steps; the estimated remaining steps (remaining time / mean step time) are 10 - s,
    so the warmdown (4 steps) starts at s = 6 and the multiplier is (10 - s) / 4."""
    on_step, seen = recorder
    summary = train(tiny_cfg("train.time_budget=5", "train.warmdown_steps=4", "train.warmup=0"), byte_data,
                    tmp_path / "r", progress=False, on_step=on_step)
    assert summary["steps"] == 10
    mults = [m for _, m, _ in seen]
    assert mults[0] == 1.0  # nothing measured at step 0
    assert mults == pytest.approx([1.0] * 7 + [0.75, 0.5, 0.25])


def test_muon_momentum_warmup_in_a_run(byte_data, tmp_path, recorder):
    on_step, seen = recorder
    train(tiny_cfg("train.max_steps=6", "train.momentum_warmup_steps=4", "train.momentum_start=0.85",
                   "train.momentum=0.95"), byte_data, tmp_path / "r", progress=False, on_step=on_step)
    assert [m for _, _, m in seen] == pytest.approx([0.85, 0.875, 0.9, 0.925, 0.95, 0.95])


def test_cosine_in_a_run(byte_data, tmp_path, recorder):
    on_step, seen = recorder
    train(tiny_cfg("train.max_steps=8", "train.decay=cosine", "train.warmup=0", "train.min_lr_frac=0.1"),
          byte_data, tmp_path / "r", progress=False, on_step=on_step)
    assert [m for _, m, _ in seen] == pytest.approx(
        [0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * s / 8)) for s in range(8)])


# --- Muon's weight decay ----------------------------------------------------------------------------------------

def test_muon_weight_decay_is_decoupled():
    """AdamW-style: the weights shrink by lr*wd on their own, whatever the gradient (a zero gradient too)."""
    torch.manual_seed(0)
    w = torch.randn(8, 16)
    p = torch.nn.Parameter(w.clone())
    p.grad = torch.zeros_like(p)
    Muon([p], lr=0.1, weight_decay=0.5, ns_dtype=torch.float32).step()
    assert torch.allclose(p.detach(), w * (1 - 0.1 * 0.5))

    g = torch.randn(8, 16)
    after = {}
    for wd in (0.0, 0.5):
        q = torch.nn.Parameter(w.clone())
        q.grad = g.clone()
        Muon([q], lr=0.1, weight_decay=wd, ns_dtype=torch.float32).step()
        after[wd] = q.detach()
    assert torch.allclose(after[0.5] - after[0.0], -0.1 * 0.5 * w, atol=1e-6)  # independent of the gradient


# --- config checks and resume -----------------------------------------------------------------------------------

@pytest.mark.parametrize("overrides, message", [
    (["train.decay=step"], "train.decay: 'step' is not one of linear, cosine"),
    (["train.warmdown_steps=-1"], "train.warmdown_steps: must be >= 0"),
    (["train.momentum_warmup_steps=-3"], "train.momentum_warmup_steps: must be >= 0"),
    (["train.momentum_start=1.0"], "train.momentum_start: must lie in"),
    (["train.optimizer=adamw", "train.momentum_warmup_steps=10"], "train.momentum_warmup_steps: warms up Muon"),
    (["train.decay=cosine", "train.warmdown_steps=10"], "train.warmdown_steps: sets the linear warmdown"),
    (["train.warmdown_steps=10", "train.qat_lr_scale=0.5"], "train.warmdown_steps and train.qat_lr_scale"),
    (["train.warmdown_steps=10", "train.swa_every=5"], "train.warmdown_steps and train.swa_start"),
])
def test_config_checks(overrides, message):
    with pytest.raises(LmgolfError) as e:
        tiny_cfg(*overrides).validate()
    assert message in str(e.value) and "\n" not in str(e.value)


@pytest.mark.parametrize("override, field", [
    ("train.decay=cosine", "train.decay"),
    ("train.warmdown_steps=3", "train.warmdown_steps"),
    ("train.momentum_warmup_steps=3", "train.momentum_warmup_steps"),
    ("train.momentum_start=0.8", "train.momentum_start"),
])
def test_resume_refuses_changing_the_schedule_fields(byte_data, tmp_path, override, field):
    interrupt_at(2, tiny_cfg("train.max_steps=4", "train.checkpoint_every=2"), byte_data, tmp_path / "r")
    saved = read_state(tmp_path / "r")["config"]
    with pytest.raises(LmgolfError, match=f"config field {field} cannot change on resume.*shapes the schedule"):
        resumed_config(tmp_path / "r", [override])
    assert refuse_frozen_changes(saved, resumed_config(tmp_path / "r")) == {}


@pytest.mark.parametrize("schedule, clocked", [
    (("train.max_steps=8", "train.decay=cosine", "train.min_lr_frac=0.1", "train.momentum_warmup_steps=5"), False),
    (("train.max_steps=8", "train.warmdown_steps=5", "train.momentum_warmup_steps=3"), False),
    (("train.time_budget=4", "train.warmdown_steps=5", "train.momentum_warmup_steps=3"), True),
])
def test_interrupted_and_resumed_equals_uninterrupted(byte_data, tmp_path, monkeypatch, schedule, clocked):
    def run(fn):
        if clocked:  # a fresh clock per run: 0.5 s a step
            ticks = itertools.count(0.0, 0.5)
            monkeypatch.setattr(trainer, "_now", lambda device: next(ticks))
        return fn()

    cfg = lambda: tiny_cfg(*schedule, "train.checkpoint_every=2")  # noqa: E731
    full = run(lambda: train(cfg(), byte_data, tmp_path / "full", progress=False))
    run(lambda: interrupt_at(5, cfg(), byte_data, tmp_path / "cut"))
    assert read_state(tmp_path / "cut")["step"] == 4
    summary = run(lambda: train(resumed_config(tmp_path / "cut"), byte_data, tmp_path / "cut", resume=True,
                                progress=False))
    assert summary["steps"] == full["steps"] == 8 and summary["val_loss"] == full["val_loss"]
    assert same_weights(tmp_path / "cut", tmp_path / "full")
    shutil.rmtree(tmp_path / "cut")
