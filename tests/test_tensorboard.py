"""train.tensorboard: the metrics log's scalars also go to RUN/tensorboard/ event files, read back here with
tensorboard's own EventAccumulator; without tensorboard installed, a one-line error."""

import json
import sys

import pytest

from conftest import interrupt_at, tiny_cfg

pytest.importorskip("tensorboard")


def read_events(log_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    acc = EventAccumulator(str(log_dir))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def test_a_run_with_tensorboard_writes_its_train_loss_and_validation_as_scalars(byte_data, tmp_path, one_thread):
    from lmgolf.training.trainer import train
    run = tmp_path / "run"
    summary = train(tiny_cfg("train.max_steps=3", "train.tensorboard=true"), byte_data, run, progress=False)
    events = read_events(run / "tensorboard")
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    losses = [(r["step"], r["loss"]) for r in logged if "loss" in r]
    assert [s for s, _ in events["train/loss"]] == [s for s, _ in losses] == [1, 2, 3]
    assert [v for _, v in events["train/loss"]] == pytest.approx([v for _, v in losses], rel=1e-6)  # float32 in events
    assert events["val/bpb"] == [(3, pytest.approx(summary["val_bpb"], rel=1e-6))]
    assert {"train/lr_mult", "train/tok_s", "val/loss"} <= set(events)


def test_a_resumed_run_shows_each_step_once_in_tensorboard(byte_data, tmp_path, one_thread):
    from lmgolf.training.trainer import train
    from lmgolf.training.resume import resumed_config
    run = tmp_path / "run"
    interrupt_at(3, tiny_cfg("train.max_steps=4", "train.checkpoint_every=2", "train.tensorboard=true"), byte_data, run)
    train(resumed_config(run), byte_data, run, resume=True, progress=False)  # from step 2: logs 3 and 4 again
    steps = [s for s, _ in read_events(run / "tensorboard")["train/loss"]]
    assert steps == [1, 2, 3, 4]


def test_tensorboard_can_be_switched_on_when_resuming(byte_data, tmp_path, one_thread):
    from lmgolf.training.trainer import train
    from lmgolf.training.resume import resumed_config
    run = tmp_path / "run"
    interrupt_at(2, tiny_cfg("train.max_steps=3", "train.checkpoint_every=1"), byte_data, run)
    train(resumed_config(run, ["train.tensorboard=true"]), byte_data, run, resume=True, progress=False)
    assert [s for s, _ in read_events(run / "tensorboard")["train/loss"]] == [3]


def test_without_the_flag_no_event_files_are_written(byte_data, tmp_path, one_thread):
    from lmgolf.training.trainer import train
    train(tiny_cfg("train.max_steps=1"), byte_data, tmp_path / "run", progress=False)
    assert not (tmp_path / "run" / "tensorboard").exists()


def test_scalars_name_train_and_validation_fields_and_skip_flags_and_lists():
    from lmgolf.training.tensorboard import scalars
    assert scalars({"step": 5, "loss": 2.5, "lr_mult": 1, "time": 1e9, "expert_usage": [[0.5]]}) == \
        {"train/loss": 2.5, "train/lr_mult": 1.0}
    assert scalars({"step": 5, "val_loss": 2.0, "val_bpb": 1.5, "val_tokens": 99, "weights": "ema"}) == \
        {"val/loss/ema": 2.0, "val/bpb/ema": 1.5}
    assert scalars({"step": 5, "loss": float("nan"), "elapsed": 3.0, "flag": True}) == {"train/elapsed": 3.0}
    assert scalars({"step": 5, "resumed": True, "elapsed": 3.0}) == scalars({"step": 5, "qat_on": True}) == {}


def test_a_missing_tensorboard_package_is_a_one_line_error(tmp_path, monkeypatch):
    from lmgolf.errors import LmgolfError
    from lmgolf.training.tensorboard import metrics_log
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # what `import` sees when it is not installed
    with pytest.raises(LmgolfError, match=r"train.tensorboard: needs the tensorboard package .*lmgolf\[tensorboard\]"):
        metrics_log(tmp_path, enabled=True, tensorboard=True)
