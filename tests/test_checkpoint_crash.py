"""Checkpoints survive a crash at any instant (docs/training.md, "Crash safety"): a kill injected at every
file-system step of a save leaves a complete checkpoint that --resume continues from, to the weights of
the run that was never interrupted; a fresh train never deletes a complete checkpoint; metrics.jsonl
holds each step once after a resume; a malformed state file is a one-line error."""

import hashlib
import json
import os
import shutil

import pytest
import torch

import lmgolf.training.checkpoint as checkpoint
from lmgolf.config import load_config
from lmgolf.errors import LmgolfError
from lmgolf.training.checkpoint import find_checkpoint, load_model, read_state
from lmgolf.training.resume import resumed_config
from lmgolf.training.trainer import train

TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.context=32", "train.batch_tokens=128",
        "train.micro_batch=4", "train.log_every=1", "train.dtype=fp32", "train.eval_tokens=256",
        "train.compile=off", "train.max_steps=8", "train.checkpoint_every=4", "train.eval_every=0"]

pytestmark = pytest.mark.usefixtures("one_thread")


def cfg():
    return load_config("cpu-demo", list(TINY))


class Killed(BaseException):
    """The process died here: raised by the injected step and by every file-system call after it."""


class Injector:
    """Counts the file-system steps of one checkpoint save (the one at `step`) and kills the process at the k-th:
    every rename, replace, unlink, rmdir, mkdir and tensor-file write, including those inside shutil.rmtree."""

    OS_CALLS = ("rename", "replace", "unlink", "rmdir", "mkdir")

    def __init__(self, monkeypatch, step: int, kill_at: int):
        self.step, self.kill_at, self.count, self.active, self.dead, self.saved = step, kill_at, 0, False, False, False
        for name in self.OS_CALLS:
            monkeypatch.setattr(os, name, self.wrap(getattr(os, name)))
        real_save_file = checkpoint.save_file

        def save_file(tensors, path):
            self.tick(torn=path)
            real_save_file(tensors, path)

        monkeypatch.setattr(checkpoint, "save_file", save_file)
        real_save = checkpoint.save_checkpoint

        def save_checkpoint(run_dir, model, optimizers, cfg, step, elapsed, extra=None):
            self.active = step == self.step and not self.dead and not self.saved
            try:
                return real_save(run_dir, model, optimizers, cfg, step, elapsed, extra)
            finally:
                self.saved = self.saved or self.active
                self.active = False

        monkeypatch.setattr(checkpoint, "save_checkpoint", save_checkpoint)
        import lmgolf.training.trainer as trainer
        monkeypatch.setattr(trainer, "save_checkpoint", save_checkpoint)

    def wrap(self, real):
        def call(*args, **kwargs):
            self.tick()
            return real(*args, **kwargs)
        return call

    def tick(self, torn=None):
        if self.dead:
            raise Killed
        if not self.active:
            return
        self.count += 1
        if self.count == self.kill_at:
            self.dead = True
            if torn is not None:  # killed halfway through writing the file
                with open(torn, "wb") as f:
                    f.write(b"\x00" * 100)
            raise Killed


@pytest.fixture(scope="module")
def uninterrupted(byte_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("full") / "run"
    train(cfg(), byte_data, run, progress=False)
    return run


def weights(run):
    return load_model(run)[0].state_dict()


def same_weights(a, b):
    wa, wb = weights(a), weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def step_lines(run):
    return [(r["step"], r["loss"]) for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines())
            if "loss" in r]


def folder_hash(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def crash_in_save(monkeypatch, data, run, step, kill_at) -> bool:
    """Trains (or resumes, when run has a checkpoint) and kills the process at the kill_at-th step of the save
    at `step`; False when that save has fewer steps (it completed)."""
    with monkeypatch.context() as m:
        injector = Injector(m, step, kill_at)
        try:
            if (run / "run.json").exists():
                train(resumed_config(run), data, run, resume=True, progress=False)
            else:
                train(cfg(), data, run, progress=False)
        except Killed:
            return True
    assert not injector.dead
    return False


def test_a_kill_at_every_step_of_a_save_resumes_to_the_uninterrupted_weights(monkeypatch, byte_data, tmp_path,
                                                                           uninterrupted):
    """The save at step 8 replaces the one at step 4: killed at each of its steps, the newest complete
    checkpoint is at step 4 or 8 and the resume ends bit for bit where the uninterrupted run did."""
    steps_seen = set()
    for kill_at in range(1, 100):
        run = tmp_path / f"k{kill_at}"
        if not crash_in_save(monkeypatch, byte_data, run, step=8, kill_at=kill_at):
            assert kill_at > 5, "the save should have several steps"
            break
        step = read_state(run)["step"]
        assert step in (4, 8), (kill_at, step)
        steps_seen.add(step)
        train(resumed_config(run), byte_data, run, resume=True, progress=False)
        assert same_weights(run, uninterrupted), kill_at
        assert step_lines(run) == step_lines(uninterrupted), kill_at  # each step once
        assert json.loads((run / "summary.json").read_text())["steps"] == 8
        shutil.rmtree(run)
    else:
        pytest.fail("the save never completed")
    assert steps_seen == {4, 8}  # killed before and after the new checkpoint became complete


def test_a_kill_in_the_first_save_leaves_nothing_to_resume_and_a_fresh_train_starts_over(monkeypatch, byte_data,
                                                                                     tmp_path, uninterrupted):
    run = tmp_path / "run"
    assert crash_in_save(monkeypatch, byte_data, run, step=4, kill_at=3)  # the tensors are written, no state yet
    with pytest.raises(LmgolfError, match="no checkpoint to resume from"):
        train(cfg(), byte_data, run, resume=True, progress=False)
    train(cfg(), byte_data, run, progress=False)  # the broken checkpoint.tmp/ is no checkpoint: started over
    assert same_weights(run, uninterrupted)
    assert not (run / "checkpoint.tmp").exists() and not (run / "checkpoint.old").exists()


def between_renames(monkeypatch, byte_data, run) -> None:
    """The state of the issue: killed between `checkpoint -> checkpoint.old` and `checkpoint.tmp -> checkpoint`."""
    for kill_at in range(1, 100):
        shutil.rmtree(run, ignore_errors=True)
        assert crash_in_save(monkeypatch, byte_data, run, step=8, kill_at=kill_at)
        if not (run / "checkpoint").exists() and (run / "checkpoint.old").exists():
            return
    pytest.fail("never killed between the renames")


def test_a_kill_between_the_renames_resumes_from_the_newest(monkeypatch, byte_data, tmp_path, uninterrupted):
    run = tmp_path / "run"
    between_renames(monkeypatch, byte_data, run)
    assert find_checkpoint(run) == run / "checkpoint.tmp" and read_state(run)["step"] == 8
    train(resumed_config(run), byte_data, run, resume=True, progress=False)
    assert same_weights(run, uninterrupted) and read_state(run)["step"] == 8
    assert find_checkpoint(run) == run / "checkpoint"
    assert not (run / "checkpoint.tmp").exists() and not (run / "checkpoint.old").exists()


def test_a_fresh_train_refuses_to_delete_complete_checkpoints(monkeypatch, byte_data, tmp_path):
    run = tmp_path / "run"
    between_renames(monkeypatch, byte_data, run)
    before = folder_hash(run)
    with pytest.raises(LmgolfError, match=r"a run is already there; pass --resume") as refused:
        train(cfg(), byte_data, run, progress=False)
    assert "\n" not in str(refused.value)
    assert folder_hash(run) == before


def test_a_kill_in_each_step_of_the_save_after_a_cut_short_one(monkeypatch, byte_data, tmp_path, uninterrupted):
    """Resumed from checkpoint.tmp/ (checkpoint/ missing), the next save first moves it into place: a kill at
    each of those steps too leaves the step-8 checkpoint."""
    base = tmp_path / "base"
    between_renames(monkeypatch, byte_data, base)
    for kill_at in range(1, 100):
        run = shutil.copytree(base, tmp_path / f"k{kill_at}")
        if not crash_in_save(monkeypatch, byte_data, run, step=8, kill_at=kill_at):
            break
        assert read_state(run)["step"] == 8, kill_at
        train(resumed_config(run), byte_data, run, resume=True, progress=False)
        assert same_weights(run, uninterrupted), kill_at
        shutil.rmtree(run)


def test_metrics_hold_each_step_once_after_an_interrupted_run(byte_data, tmp_path, uninterrupted):
    from conftest import interrupt_at
    run = tmp_path / "run"
    interrupt_at(6, cfg(), byte_data, run)
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"step": 7, "loss": 1.')  # torn by the kill
    train(resumed_config(run), byte_data, run, resume=True, progress=False)
    assert step_lines(run) == step_lines(uninterrupted)
    steps = [json.loads(line).get("step") for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps.count(5) == 1 and steps.count(6) == 1


# ---------------------------------------------------------------- malformed state files


@pytest.fixture(scope="module")
def finished(uninterrupted):
    return uninterrupted


def damaged(finished, tmp_path, change):
    run = shutil.copytree(finished, tmp_path / "run")
    path = run / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    change(state)
    path.write_text(json.dumps(state))
    return run


def one_line_refusal(run, data, *fragments):
    with pytest.raises(LmgolfError) as refused:
        train(resumed_config(run, ["train.max_steps=12"]), data, run, resume=True, progress=False)
    message = str(refused.value)
    assert "\n" not in message and "state.json" in message
    for fragment in fragments:
        assert fragment in message, message


def test_a_missing_checksum_entry_is_a_one_line_error(finished, byte_data, tmp_path):
    run = damaged(finished, tmp_path, lambda s: s["sha256"].pop("optimizer.safetensors"))
    one_line_refusal(run, byte_data, "sha256.optimizer.safetensors")


def test_a_non_integer_step_is_a_one_line_error(finished, byte_data, tmp_path):
    run = damaged(finished, tmp_path, lambda s: s.update(step="8"))
    one_line_refusal(run, byte_data, "'step'", "integer")


def test_a_fractional_step_is_a_one_line_error(finished, byte_data, tmp_path):
    run = damaged(finished, tmp_path, lambda s: s.update(step=7.5))
    one_line_refusal(run, byte_data, "'step'")


def test_a_non_numeric_elapsed_is_a_one_line_error(finished, byte_data, tmp_path):
    run = damaged(finished, tmp_path, lambda s: s.update(elapsed=None))
    one_line_refusal(run, byte_data, "'elapsed'")


@pytest.mark.parametrize("rng", [{"torch": [1, 2, 3]}, {"torch": "x"}, {"torch": [300] * 5056}, [], None])
def test_a_malformed_rng_state_is_a_one_line_error(finished, byte_data, tmp_path, rng):
    run = damaged(finished, tmp_path, lambda s: s.update(rng=rng))
    one_line_refusal(run, byte_data, "rng")


def test_a_missing_rng_state_is_a_one_line_error(finished, byte_data, tmp_path):
    run = damaged(finished, tmp_path, lambda s: s.pop("rng"))
    one_line_refusal(run, byte_data, "'rng' missing")


def test_malformed_optimizers_are_a_one_line_error(finished, byte_data, tmp_path):
    run = damaged(finished, tmp_path, lambda s: s.update(optimizers=[{"param_groups": 3}]))
    one_line_refusal(run, byte_data, "'optimizers'")


def test_a_state_that_is_not_an_object_is_a_one_line_error(finished, byte_data, tmp_path):
    run = shutil.copytree(finished, tmp_path / "run")
    (run / "checkpoint" / "state.json").write_text("[1, 2]")
    with pytest.raises(LmgolfError, match="not a JSON object"):
        read_state(run)
