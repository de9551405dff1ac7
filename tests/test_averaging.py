"""Weight averaging (lmgolf.training.averaging): EMA and SWA equal their reference formulas, export_weights
chooses what the checkpoint's model and the artifact hold, resume keeps the averages bitwise, the final
validation reports every kept variant, and the config fields are checked (docs/training.md, "Weight averaging")."""

import json

import pytest
import torch
from safetensors.torch import load_file

import lmgolf.training.trainer as trainer
from conftest import interrupt_at
from lmgolf.config import load_config
from lmgolf.errors import LmgolfError
from lmgolf.training.averaging import WeightAverages
from lmgolf.training.checkpoint import load_model
from lmgolf.training.resume import resumed_config
from lmgolf.training.trainer import train

TINY = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.context=32", "train.batch_tokens=256",
        "train.micro_batch=4", "train.log_every=1", "train.dtype=fp32", "train.eval_tokens=512",
        "train.compile=off", "train.max_steps=6"]
# EMA from step 3 (progress at the top of step n is (n-1)/6 >= 0.3), SWA snapshots after steps 4 and 6
AVG = ["train.ema_decay=0.9", "train.ema_start=0.3", "train.swa_every=2", "train.swa_start=0.5"]

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_cfg(*extra):
    return load_config("cpu-demo", TINY + list(extra))


@pytest.fixture
def recorded(monkeypatch):
    """The weights (fp32) after every optimizer step, as the trainer hands them to the averages, and the averages."""
    seen = {"weights": {}, "averages": []}

    class Recording(WeightAverages):
        def __init__(self, model, t):
            super().__init__(model, t)
            seen["averages"].append(self)

        def update(self, model, step, progress):
            seen["weights"][step] = {n: p.detach().float().clone() for n, p in model.named_parameters()}
            super().update(model, step, progress)

    monkeypatch.setattr(trainer, "WeightAverages", Recording)
    return seen


def close(a, b):
    return a.keys() == b.keys() and all(torch.allclose(a[k], b[k], rtol=1e-6, atol=1e-7) for k in a)


def reference(weights):
    ema = {k: v.clone() for k, v in weights[3].items()}
    for step in (4, 5, 6):
        ema = {k: 0.9 * ema[k] + (1 - 0.9) * weights[step][k] for k in ema}
    swa = {k: (weights[4][k] + weights[6][k]) / 2 for k in weights[4]}
    return ema, swa


def test_ema_and_swa_equal_the_reference_formulas(byte_data, tmp_path, recorded):
    summary = train(tiny_cfg(*AVG), byte_data, tmp_path / "run", progress=False)
    avg = recorded["averages"][-1]
    ema, swa = reference(recorded["weights"])
    assert avg.ema_step == 3 and avg.swa_count == 2
    assert close(avg.ema, ema) and close(avg.swa, swa)
    saved = load_file(str(tmp_path / "run" / "checkpoint" / "averages.safetensors"))
    assert close({k[4:]: v for k, v in saved.items() if k.startswith("ema.")}, ema)
    assert close({k[4:]: v for k, v in saved.items() if k.startswith("swa.")}, swa)
    # export_weights=raw: the checkpoint's model is the raw weights, there is no raw.safetensors
    assert close(dict(load_model(tmp_path / "run")[0].named_parameters()), recorded["weights"][6])
    assert not (tmp_path / "run" / "checkpoint" / "raw.safetensors").exists()
    # the final validation reports every kept variant; summary's val_* are the exported one's
    assert summary["export_weights"] == "raw" and set(summary["variants"]) == {"raw", "ema", "swa"}
    assert summary["val_loss"] == summary["variants"]["raw"]["val_loss"]
    assert summary["variants"]["ema"]["val_loss"] != summary["variants"]["raw"]["val_loss"]
    lines = [json.loads(x) for x in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [r["weights"] for r in lines if "weights" in r] == ["raw", "ema", "swa"]
    assert json.loads((tmp_path / "run" / "summary.json").read_text()) == summary


def test_export_ema_puts_the_ema_into_the_checkpoint_model_and_the_artifact(byte_data, tmp_path, recorded):
    from lmgolf import api
    from lmgolf.model.gpt import GPT
    from lmgolf.packing.artifact import load_artifact
    from lmgolf.packing.writer import pack as write_artifact

    run = tmp_path / "run"
    summary = train(tiny_cfg(*AVG, "train.export_weights=ema"), byte_data, run, progress=False)
    ema, _ = reference(recorded["weights"])
    model, cfg = load_model(run)
    assert close(dict(model.named_parameters()), ema)
    raw = load_file(str(run / "checkpoint" / "raw.safetensors"))
    assert close({k: v for k, v in raw.items() if k in ema}, recorded["weights"][6])
    assert summary["export_weights"] == "ema" and summary["val_loss"] == summary["variants"]["ema"]["val_loss"]
    # the artifact holds the EMA, quantized: as packing the EMA weights directly
    api.pack(run)
    direct = GPT(cfg.model)
    direct.load_state_dict(model.state_dict())
    write_artifact(direct, cfg, api.load(run).tokenizer, tmp_path / "direct.lmg")
    a, b = load_artifact(run / "model.lmg")[0].state_dict(), load_artifact(tmp_path / "direct.lmg")[0].state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_resume_keeps_the_averages_bitwise(byte_data, tmp_path):
    cfg = AVG + ["train.export_weights=swa", "train.checkpoint_every=3"]
    train(tiny_cfg(*cfg), byte_data, tmp_path / "whole", progress=False)
    interrupt_at(5, tiny_cfg(*cfg), byte_data, tmp_path / "cut")  # resumes from the checkpoint at step 3
    train(resumed_config(tmp_path / "cut"), byte_data, tmp_path / "cut", resume=True, progress=False)
    for name in ("averages.safetensors", "model.safetensors", "raw.safetensors"):
        a = load_file(str(tmp_path / "whole" / "checkpoint" / name))
        b = load_file(str(tmp_path / "cut" / "checkpoint" / name))
        assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), name


def test_extending_a_finished_run_continues_from_the_raw_weights(byte_data, tmp_path, recorded):
    """An export=ema run extended to 8 steps trains on as the export=raw run does: from the raw weights."""
    ends = {}
    for export in ("ema", "raw"):
        run = tmp_path / export
        train(tiny_cfg(*AVG, f"train.export_weights={export}"), byte_data, run, progress=False)
        summary = train(resumed_config(run, ["train.max_steps=8"]), byte_data, run, resume=True, progress=False)
        assert summary["steps"] == 8 and summary["export_weights"] == export
        avg = recorded["averages"][-1]
        assert avg.ema_step == 3 and avg.swa_count == 3  # the EMA went on; SWA took step 8 as its third snapshot
        name = "raw.safetensors" if export == "ema" else "model.safetensors"
        ends[export] = load_file(str(run / "checkpoint" / name))
    assert all(torch.equal(ends["ema"][k], ends["raw"][k]) for k in ends["raw"])


def test_averaging_fields_cannot_change_on_resume_but_export_weights_can(byte_data, tmp_path):
    run = tmp_path / "run"
    train(tiny_cfg(*AVG, "train.max_steps=2"), byte_data, run, progress=False)
    assert resumed_config(run, ["train.export_weights=ema"]).train.export_weights == "ema"
    for field, value in (("ema_decay", "0.99"), ("ema_start", "0.5"), ("swa_every", "3"), ("swa_start", "0.2")):
        with pytest.raises(LmgolfError, match=f"train.{field} cannot change on resume.*weight averages"):
            resumed_config(run, [f"train.{field}={value}"])


@pytest.mark.parametrize("override, fragment", [
    ("train.ema_decay=1", "train.ema_decay: must lie in [0, 1)"),
    ("train.ema_decay=-0.1", "train.ema_decay: must lie in [0, 1)"),
    ("train.ema_start=1", "train.ema_start: must lie in [0, 1)"),
    ("train.swa_start=-0.5", "train.swa_start: must lie in [0, 1)"),
    ("train.swa_every=-1", "train.swa_every: must be >= 0"),
    ("train.export_weights=best", "train.export_weights: 'best' is not one of raw, ema, swa"),
    ("train.export_weights=ema", "train.export_weights: 'ema' needs train.ema_decay > 0"),
    ("train.export_weights=swa", "train.export_weights: 'swa' needs train.swa_every > 0"),
])
def test_config_checks_are_one_line_errors(override, fragment):
    with pytest.raises(LmgolfError) as e:
        load_config("cpu-demo", [override]).validate()
    assert fragment in str(e.value) and "\n" not in str(e.value)
