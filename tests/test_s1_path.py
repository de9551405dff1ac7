"""The S1 path of docs/serve.md at a tiny scale: prepare the OpenWebText sample with the GPT-2 tokenizer,
train a shrunk s1-option-a, evaluate, pack, serve and chat, each through the `lmgolf` command."""

import io
import sys

import pytest

from lmgolf.data import tokenizers

from conftest import cli, data_dir

SHRUNK = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.n_kv_head=2", "model.context=64",
          "train.batch_tokens=256", "train.micro_batch=4", "train.dtype=fp32", "train.eval_tokens=512",
          "train.compile=off"]


@pytest.mark.slow
def test_the_s1_recipe_runs_from_data_to_chat(tmp_path, capsys, monkeypatch, one_thread):
    if data_dir() is None or not (data_dir() / "openwebtext-sample").is_dir():
        pytest.skip("the OpenWebText sample is not here (set LMGOLF_DATA_DIR)")
    if not tokenizers.gpt2_folders():
        pytest.skip("the GPT-2 tokenizer files are not here")
    pytest.importorskip("starlette", reason="lmgolf serve needs the [serve] extra")
    from starlette.testclient import TestClient
    import lmgolf.serve.server as server

    data, run = tmp_path / "data", tmp_path / "run"
    code, out, err = cli(capsys, "data", "prepare", "--corpus", "openwebtext-sample", "--tokenizer", "gpt2",
                         "--out", data, "--val-fraction", "0.002")  # a small val split: the run's final pass scores all of it
    assert code == 0 and "vocab 50257" in out, err
    code, out, err = cli(capsys, "train", "--preset", "s1-option-a", "--data", data, "--out", run,
                         "--max-steps", "2", *SHRUNK)
    assert code == 0, err
    code, out, err = cli(capsys, "pack", run)
    assert code == 0 and (run / "model.lmg").is_file(), err
    code, out, err = cli(capsys, "eval", run / "model.lmg", "--max-tokens", "256")
    assert code == 0 and "bpb" in out, err

    seen = {}

    def serve(app, host, port):
        with TestClient(app) as client:
            seen["card"] = client.get("/v1/card").json()
            seen["chat"] = client.post("/v1/chat/completions", json={
                "messages": [{"role": "user", "content": "Hello"}], "max_tokens": 4, "temperature": 0}).json()

    monkeypatch.setattr(server, "serve", serve)
    code, out, err = cli(capsys, "serve", run / "model.lmg", "--device", "cpu")
    assert code == 0, err
    assert seen["card"]["tokenizer"] == "gpt2" and seen["chat"]["choices"][0]["message"]["role"] == "assistant"
    assert seen["chat"]["usage"]["completion_tokens"] <= 4

    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello\n/quit\n"))
    code, out, err = cli(capsys, "chat", run / "model.lmg", "--max-new-tokens", "4", "--device", "cpu")
    assert code == 0 and out.count("> ") == 2 and err == ""
