"""`--resume` honours or refuses: budgets extend a run (finished or not), bookkeeping fields change, every
field the saved state depends on is refused with a one-line error before anything in the run folder is
written, and so is a data folder with another tokenizer (docs/training.md, "Resuming")."""

import hashlib
import shutil
import itertools
import json

import pytest
import torch

import lmgolf.training.trainer as trainer
from conftest import tiny_cfg, interrupt_at
from lmgolf.errors import LmgolfError
from lmgolf.training.checkpoint import load_model, read_state
from lmgolf.training.resume import refuse_frozen_changes, resumed_config
from lmgolf.training.trainer import train


pytestmark = pytest.mark.usefixtures("one_thread")


def records(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def step_records(run_dir):
    return [r for r in records(run_dir) if "loss" in r]


def weights(run_dir):
    return load_model(run_dir)[0].state_dict()


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def hashes(run_dir):
    return {str(p.relative_to(run_dir)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(run_dir.rglob("*")) if p.is_file()}


def resume(run_dir, data, *overrides, **kw):
    return train(resumed_config(run_dir, list(overrides)), data, run_dir, resume=True, progress=False, **kw)


@pytest.fixture
def fake_clock(monkeypatch):
    """Every training step takes exactly 0.5 s: the trainer reads the clock once before and once after a step."""
    ticks = itertools.count(0.0, 0.5)
    monkeypatch.setattr(trainer, "_now", lambda device: next(ticks))


@pytest.fixture(scope="module")
def finished(byte_data, tmp_path_factory):
    """A finished 4-step run, to be copied by tests that resume it."""
    run = tmp_path_factory.mktemp("finished") / "run"
    train(tiny_cfg("train.max_steps=4"), byte_data, run, progress=False)
    return run


def copy_of(run, tmp_path):
    return shutil.copytree(run, tmp_path / "run")


def test_extending_a_finished_run_with_a_flat_schedule_equals_a_fresh_run(byte_data, tmp_path):
    """With no warmup or warmdown the LR never depends on the budget, so 4 steps then 4 more are 8 steps."""
    flat = ("train.warmdown=0", "train.warmup=0")
    train(tiny_cfg("train.max_steps=4", *flat), byte_data, tmp_path / "cut", progress=False)
    summary = resume(tmp_path / "cut", byte_data, "train.max_steps=8")
    train(tiny_cfg("train.max_steps=8", *flat), byte_data, tmp_path / "fresh", progress=False)
    assert summary["steps"] == 8 and read_state(tmp_path / "cut")["step"] == 8
    assert same_weights(tmp_path / "cut", tmp_path / "fresh")
    assert json.loads((tmp_path / "cut" / "config.json").read_text())["train"]["max_steps"] == 8
    assert json.loads((tmp_path / "cut" / "summary.json").read_text())["steps"] == 8
    marks = [r for r in records(tmp_path / "cut") if r.get("resumed")]
    assert marks == [{**marks[0], "step": 4, "changed": {"train.max_steps": [4, 8]}}]


def test_extension_moves_the_warmdown_to_the_end_of_the_new_budget(byte_data, tmp_path):
    """Progress is recomputed against the new budget: the extension's LR is the fresh 8-step run's from step 5 on
    (back to the peak, then the warmdown again); the first 4 steps had their own warmdown, so the weights differ."""
    schedule = ("train.warmup=0", "train.warmdown=0.5")
    train(tiny_cfg("train.max_steps=4", *schedule), byte_data, tmp_path / "r", progress=False)
    resume(tmp_path / "r", byte_data, "train.max_steps=8")
    train(tiny_cfg("train.max_steps=8", *schedule), byte_data, tmp_path / "fresh", progress=False)
    extended = [(r["step"], r["lr_mult"]) for r in step_records(tmp_path / "r")]
    fresh = [(r["step"], r["lr_mult"]) for r in step_records(tmp_path / "fresh")]
    assert [m for _, m in extended] == [1.0, 1.0, 1.0, 0.5, 1.0, 0.75, 0.5, 0.25]
    assert extended[4:] == fresh[4:]
    assert not same_weights(tmp_path / "r", tmp_path / "fresh")


def test_time_budget_extension_continues_to_the_new_budget(byte_data, tmp_path, fake_clock):
    first = train(tiny_cfg("train.time_budget=2"), byte_data, tmp_path / "r", progress=False)
    assert first["steps"] == 4 and first["elapsed"] == 2.0
    summary = resume(tmp_path / "r", byte_data, "train.time_budget=4")
    assert summary["steps"] == 8 and summary["elapsed"] == 4.0


def test_resume_under_a_time_budget_ends_with_the_uninterrupted_weights(byte_data, tmp_path, fake_clock):
    cfg = lambda: tiny_cfg("train.time_budget=3", "train.checkpoint_every=2")  # noqa: E731

    full = train(cfg(), byte_data, tmp_path / "full", progress=False)
    interrupt_at(5, cfg(), byte_data, tmp_path / "cut")
    assert read_state(tmp_path / "cut")["elapsed"] == 2.0  # the checkpoint at step 4
    summary = resume(tmp_path / "cut", byte_data)
    assert summary["steps"] == full["steps"] == 6 and summary["elapsed"] == full["elapsed"] == 3.0
    assert summary["val_loss"] == full["val_loss"]
    assert same_weights(tmp_path / "cut", tmp_path / "full")


def test_bookkeeping_fields_change_without_changing_the_run(byte_data, tmp_path):
    cfg = lambda: tiny_cfg("train.max_steps=8", "train.checkpoint_every=4")  # noqa: E731
    train(cfg(), byte_data, tmp_path / "full", progress=False)

    interrupt_at(4, cfg(), byte_data, tmp_path / "cut")
    resume(tmp_path / "cut", byte_data, "train.log_every=2", "eval_every=2", "train.eval_tokens=256")
    after = [r["step"] for r in step_records(tmp_path / "cut")][4:]
    assert after == [6, 8]  # log_every=2 from the resume on
    assert [r["step"] for r in records(tmp_path / "cut") if "val_loss" in r] == [6, 8, 8]  # and eval_every=2
    assert same_weights(tmp_path / "cut", tmp_path / "full")


@pytest.mark.parametrize("override, field, old, new", [
    ("model.n_layer=3", "model.n_layer", 2, 3),                      # the model's shape
    ("model.logit_softcap=20", "model.logit_softcap", "30.0", "20.0"),  # the model's function
    ("train.seed=7", "train.seed", 1337, 7),                         # the data order
    ("train.batch_tokens=512", "train.batch_tokens", 256, 512),      # the data of each step
    ("train.optimizer=adamw", "train.optimizer", '"muon"', '"adamw"'),  # the optimizer state's layout
    ("matrix_lr=0.01", "train.matrix_lr", 0.03, 0.01),               # the optimizer's hyperparameters
    ("train.warmdown=0.5", "train.warmdown", 0.4, 0.5),              # the schedule
    ("train.qat=true", "train.qat", "false", "true"),
    ("train.curriculum=length", "train.curriculum", '"none"', '"length"'),  # the data order
    ("model.dropout=0.1", "model.dropout", "0.0", "0.1"),             # the model's function
])
def test_a_field_the_state_depends_on_is_refused_and_nothing_is_written(byte_data, finished, tmp_path,
                                                                         override, field, old, new):
    run = copy_of(finished, tmp_path)
    before = hashes(run)
    message = f"resume: config field {field} cannot change on resume (checkpoint: {old}, asked: {new};"
    with pytest.raises(LmgolfError) as refused:
        resumed_config(run, [override, "train.max_steps=8"])
    assert str(refused.value).startswith(message) and "\n" not in str(refused.value)
    with pytest.raises(LmgolfError, match=f"config field {field} cannot change"):  # a config built afresh (the API)
        train(tiny_cfg(override, "train.max_steps=8"), byte_data, run, resume=True, progress=False)
    assert hashes(run) == before


def test_packing_fields_change_unless_qat_trains_against_them(finished):
    saved = read_state(finished)["config"]
    cfg = resumed_config(finished, ["pack.default_storage=int6-row", "train.max_steps=8"])
    assert cfg.pack.default_storage == "int6-row"
    with_qat = json.loads(json.dumps(saved))
    with_qat["train"]["qat"] = True
    cfg.train.qat = True
    with pytest.raises(LmgolfError, match="config field pack.default_storage cannot change .*train.qat trains"):
        refuse_frozen_changes(with_qat, cfg)


def test_a_data_folder_with_another_tokenizer_is_refused(byte_data, small_corpus, finished, tmp_path):
    from lmgolf.data.prepare import prepare_data
    other = tmp_path / "char"
    prepare_data(str(small_corpus), "char", other, val_fraction=0.1, progress=False)
    run = copy_of(finished, tmp_path)
    before = hashes(run)
    with pytest.raises(LmgolfError, match=r"resume: data folder .*char has tokenizer fingerprint [0-9a-f]{12}\.\.\., "
                                          r"the run in .* was trained with [0-9a-f]{12}\.\.\."):
        resume(run, other, "train.max_steps=8")
    assert hashes(run) == before


def test_a_finished_run_whose_budget_is_not_raised_is_refused(byte_data, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    before = hashes(run)
    with pytest.raises(LmgolfError, match=r"is finished at step 4, its budget train.max_steps=4 is spent"):
        resume(run, byte_data)
    with pytest.raises(LmgolfError, match=r"train.max_steps=4 is spent"):  # a time budget alone does not lift it
        resume(run, byte_data, "train.time_budget=60")
    assert hashes(run) == before


def test_a_budget_lowered_below_what_the_checkpoint_used_is_refused(byte_data, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "summary.json").unlink()  # not finished: only the lowered budget stands in the way
    before = hashes(run)
    with pytest.raises(LmgolfError, match=r"resume: train.max_steps=3 is below what the checkpoint has already used "
                                          r"\(step 4, "):
        resume(run, byte_data, "train.max_steps=3")
    assert hashes(run) == before


def test_a_run_stopped_before_its_final_validation_resumes_to_finish_it(byte_data, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    (run / "summary.json").unlink()
    summary = resume(run, byte_data)
    assert summary["steps"] == 4 and (run / "summary.json").is_file()
    assert same_weights(run, finished)


def test_a_raised_budget_moves_qat_to_its_new_start(byte_data, tmp_path):
    """QAT from 75%: at step 3 of 4; extended to 8 steps, progress falls to 50%, so QAT is off until step 6."""
    first = train(tiny_cfg("train.max_steps=4", "train.qat=true", "train.qat_start=0.75"), byte_data,
                  tmp_path / "r", progress=False)
    assert first["qat_step"] == 3
    summary = resume(tmp_path / "r", byte_data, "train.max_steps=8")
    assert summary["qat_step"] == 6
    assert [r["step"] for r in records(tmp_path / "r") if r.get("qat_on")] == [3, 6]


def test_optimizer_state_that_does_not_fit_the_roles_is_a_one_line_error(byte_data, finished, tmp_path):
    run = copy_of(finished, tmp_path)
    state = json.loads((run / "checkpoint" / "state.json").read_text())
    groups = state["optimizers"][0]["param_groups"]
    groups[0]["params"] = groups[0]["params"][:-1]  # as if a parameter had another optimizer role then
    (run / "checkpoint" / "state.json").write_text(json.dumps(state))
    with pytest.raises(LmgolfError, match=r"^checkpoint optimizer 0: its parameter groups do not fit") as refused:
        resume(run, byte_data, "train.max_steps=8")
    assert "\n" not in str(refused.value)
