"""The Python API (lmgolf.api): load, score, train, pack, generate, and its lazy re-export from lmgolf."""

import json
import shutil
import subprocess
import sys

import pytest
import torch

import lmgolf
from lmgolf import api
from lmgolf.cli import main
from lmgolf.data.folder import DataFolder
from lmgolf.errors import LmgolfError
from lmgolf.eval.baselines import baseline_report
from lmgolf.eval.evaluate import evaluate, fit_temperature
from lmgolf.eval.ttt import TTTConfig, evaluate_ttt
from lmgolf.training.checkpoint import load_model


def test_train_returns_a_run_whose_model_is_the_checkpoints(api_run, byte_data):
    checkpoint, cfg = load_model(api_run.path)
    assert api_run.summary["steps"] == 3 and api_run.summary == json.loads((api_run.path / "summary.json").read_text())
    assert api_run.cfg.model == cfg.model and api_run.cfg.model.n_layer == 1 and api_run.cfg.train.max_steps == 3
    assert api_run.data == str(byte_data) and api_run.checkpoint.is_dir()
    assert all(torch.equal(a, b) for a, b in zip(api_run.model.state_dict().values(), checkpoint.state_dict().values()))


def test_load_gives_the_same_kind_of_object_for_a_run_folder_and_an_artifact(api_run, api_artifact, byte_data):
    folder, packed = api.load(api_run.path, device="cpu"), api.load(api_artifact, device="cpu")
    assert type(folder) is type(packed) is api.Loaded
    assert (folder.kind, packed.kind) == ("run", "artifact")
    assert folder.cfg.model == packed.cfg.model and folder.tokenizer.fingerprint == packed.tokenizer.fingerprint
    assert folder.data_path == packed.data_path == str(byte_data)
    assert folder.info == api_run.summary and packed.info["artifact_bytes"] == api_artifact.stat().st_size
    assert packed.artifact_bytes == api_artifact.stat().st_size and folder.artifact_bytes is None
    assert api.load(api_artifact, "elsewhere").data_path == "elsewhere"


def test_load_refuses_a_missing_path(tmp_path):
    with pytest.raises(LmgolfError, match="no such run folder or artifact"):
        api.load(tmp_path / "nothing")


def _direct(loaded, data, mode, **kw):
    """What lmgolf.eval gives for one mode, called without the API."""
    model, context = loaded.model, loaded.cfg.model.context
    tokens, nbytes = data.val_tokens_and_bytes()
    common = dict(max_tokens=300, progress=False, bos_id=data.bos_id)
    if mode == "ttt":
        return evaluate_ttt(model, tokens, nbytes, context, TTTConfig(**kw), **common)
    if mode == "temperature":
        t = fit_temperature(model, data.train_tokens(), context, fit_tokens=64)
        return evaluate(model, tokens, nbytes, context, temperature=t, **common)
    return evaluate(model, tokens, nbytes, context, docs=mode == "docs", **common, **kw)


@pytest.mark.parametrize("mode,options,direct", [
    ("window", {"stride": 8}, {"stride": 8}),
    ("docs", {}, {}),
    ("temperature", {"fit_tokens": 64}, {}),
    ("ttt", {"ttt": {"steps": 1, "lr": 0.01}}, {"steps": 1, "lr": 0.01}),
    ("ttt", {"ttt": {"optimizer": "lora", "lora_rank": 2, "reset_docs": True}, "docs": True},
     {"optimizer": "lora", "lora_rank": 2, "reset_docs": True, "docs": True}),
])
def test_every_mode_scores_as_lmgolf_eval_does(api_run, byte_data, mode, options, direct):
    loaded = api.load(api_run.path, device="cpu")
    scored = api.score(loaded, mode=mode, max_tokens=300, progress=False, **options)
    expected = _direct(loaded, DataFolder(byte_data), mode, **direct)
    assert scored.mode == expected.mode == mode and scored.tokens == expected.tokens == 300
    assert scored.bpb == pytest.approx(expected.bpb, rel=1e-6) and scored.loss == pytest.approx(expected.loss, rel=1e-6)
    assert scored.total_bpb is None and "total_bpb" not in scored.as_dict()


def test_an_artifacts_score_counts_its_bytes_and_can_carry_baselines(api_artifact, byte_data):
    scored = api.score(api_artifact, max_tokens=300, baselines=True, baseline_prefix_bytes=1000, device="cpu",
                       progress=False)
    size = api_artifact.stat().st_size
    assert scored.artifact_bytes == size
    assert scored.total_bpb == pytest.approx((size * 8 + scored.bpb * scored.bytes) / scored.bytes)
    assert scored.baselines == baseline_report(DataFolder(byte_data), 300, 1000)
    summary = scored.as_dict()
    assert summary["total_bpb"] == scored.total_bpb and summary["baselines"]["prefix_bytes"] == 1000
    assert "total description length" in scored.format() and "zstd" in scored.format()


@pytest.mark.parametrize("options,fragment", [
    ({"mode": "window", "ttt": {"steps": 2}}, "score ttt: needs mode='ttt'"),
    ({"mode": "ttt", "ttt": {"lora_rank": 2}}, "score ttt['lora_rank']: needs ttt={'optimizer': 'lora'}"),
    ({"mode": "ttt", "ttt": {"colour": 1}}, "unknown option 'colour'"),
    ({"mode": "ttt", "ttt": {"steps": -1}}, "ttt steps"),
    ({"stride": 33}, "score stride: must lie in [1, 32]"),
    ({"max_tokens": 0}, "score max_tokens: must be >= 1"),
    ({"docs": True}, "score docs: needs mode='ttt' or 'temperature'"),
    ({"fit_tokens": 10}, "score fit_tokens: needs mode='temperature'"),
    ({"baseline_prefix_bytes": 10}, "score baseline_prefix_bytes: needs baselines=True"),
    ({"mode": "beam"}, "score mode: 'beam' is not one of"),
    ({"dtype": "fp8"}, "score dtype: 'fp8' is not one of"),
])
def test_bad_score_arguments_name_the_argument(api_run, options, fragment):
    with pytest.raises(LmgolfError) as caught:
        api.score(api_run.path, progress=False, **options)
    assert fragment in str(caught.value) and "\n" not in str(caught.value)


def test_the_command_line_words_the_same_errors_with_its_flags(api_run, capsys):
    assert main(["eval", str(api_run.path), "--docs", "--quiet"]) == 2
    assert "lmgolf: error: eval --docs: needs --mode ttt or temperature" in capsys.readouterr().err
    assert main(["eval", str(api_run.path), "--mode", "ttt", "--lora-alpha", "2", "--quiet"]) == 2
    assert "lmgolf: error: eval --lora-alpha: needs --ttt-optimizer lora" in capsys.readouterr().err


def test_score_needs_data_where_no_run_json_names_it(api_artifact, tmp_path):
    lone = tmp_path / "model.lmg"
    shutil.copy(api_artifact, lone)
    with pytest.raises(api.ArgumentError, match="score data: needed"):
        api.score(lone, progress=False)


def test_pack_writes_an_artifact_that_loads(api_run, tmp_path):
    report = api.pack(api_run.path, tmp_path / "m.lmg", policy="int6-emb8", codec="lzma", overrides={"byte_shuffle": True})
    assert report.path == str(tmp_path / "m.lmg") and report.codec == "lzma" and report.fits()
    loaded = api.load(tmp_path / "m.lmg", device="cpu")
    assert loaded.kind == "artifact" and loaded.info["codec"] == "lzma" and loaded.info["policy"]["byte_shuffle"]
    assert loaded.cfg.model == api_run.cfg.model and loaded.artifact_bytes == report.artifact_bytes
    again = api.pack(loaded, tmp_path / "again.lmg", policy="int8")  # a Loaded artifact re-packs
    assert again.artifact_bytes > 0 and (tmp_path / "again.lmg").is_file()


def test_pack_refuses_bad_arguments_before_writing(api_run, api_artifact, tmp_path):
    with pytest.raises(api.ArgumentError, match="pack out: required"):
        api.pack(api_artifact)
    with pytest.raises(api.ArgumentError, match="pack runner"):
        api.pack(api_run, tmp_path / "m.lmg", runner="fancy")
    with pytest.raises(LmgolfError, match="not written"):
        api.pack(api_run, tmp_path / "m.lmg", budget=1000)
    assert not (tmp_path / "m.lmg").exists()


def test_generate_is_deterministic_for_a_seed(api_artifact):
    loaded = api.load(api_artifact, device="cpu")
    first = api.generate(loaded, "The ", 24, seed=3)
    assert first.startswith("The ") and first == api.generate(api_artifact, "The ", 24, seed=3, device="cpu")
    assert api.generate(loaded, "", 24, temperature=0) == api.generate(loaded, "", 24, temperature=0, seed=9)


def test_train_resumes_with_a_raised_step_budget(api_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(api_run.path, copy)
    resumed = api.train(copy, resume=True, max_steps=5, progress=False)
    assert resumed.summary["steps"] == 5 and resumed.cfg.train.max_steps == 5


@pytest.mark.parametrize("kwargs,fragment", [
    ({}, "train preset: required to start a run unless resume=True"),
    ({"preset": "cpu-demo"}, "train data: required"),
    ({"preset": "cpu-demo", "data": "d", "overrides": "model.n_layer=2"}, "train overrides: a list"),
    ({"resume": True, "preset": "cpu-demo"}, "train preset: not used to resume"),
])
def test_bad_train_arguments_name_the_argument(tmp_path, kwargs, fragment):
    with pytest.raises(api.ArgumentError, match=fragment.replace("[", r"\[")):
        api.train(tmp_path / "r", **kwargs)
    assert not (tmp_path / "r").exists()


def test_lmgolf_re_exports_the_api_lazily():
    assert lmgolf.load is api.load and lmgolf.score is api.score and lmgolf.Run is api.Run
    assert {"load", "score", "train", "pack", "generate"} <= set(dir(lmgolf))
    with pytest.raises(AttributeError):
        lmgolf.nothing_here  # noqa: B018
    probe = ("import sys, lmgolf; assert 'lmgolf.api' not in sys.modules and 'torch' not in sys.modules; "
             "lmgolf.load; assert 'lmgolf.api' in sys.modules")
    subprocess.run([sys.executable, "-c", probe], check=True)
