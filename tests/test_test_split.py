"""Official test splits (PTB, WikiText-2): test.bin / test_bytes.bin, counts.test, `eval --split test`,
and the word-level perplexity printed beside bpb for word tokenizers."""

import json
import math

import numpy as np
import pytest

from lmgolf import api
from lmgolf.cli import main
from lmgolf.data.folder import DataFolder
from lmgolf.data.meta import load_meta
from lmgolf.data.prepare import prepare_data
from lmgolf.errors import LmgolfError
from lmgolf.eval.evaluate import EvalResult, evaluate, scored_words, word_perplexity

from conftest import data_dir

TINY = {"model.n_layer": 1, "model.d_model": 32, "model.n_head": 2, "model.context": 32, "train.batch_tokens": 128,
        "train.micro_batch": 4, "train.dtype": "fp32", "train.log_every": 1}


def ptb_root_or_skip():
    root = data_dir()
    if root is None or not (root / "ptb" / "ptb.test.txt").is_file():
        pytest.skip("PTB not available: set LMGOLF_DATA_DIR to a folder holding ptb/ptb.test.txt (e.g. shared/data)")
    return root


@pytest.fixture(scope="module")
def ptb_data(tmp_path_factory):
    root = ptb_root_or_skip()
    out = tmp_path_factory.mktemp("ptb") / "data"
    prepare_data("ptb", "word", out, vocab_size=2000, data_dir=str(root), progress=False)
    return out


@pytest.fixture(scope="module")
def ptb_run(ptb_data, tmp_path_factory, one_thread):
    return api.train(tmp_path_factory.mktemp("ptbrun") / "run", preset="cpu-demo", data=ptb_data, overrides=TINY,
                     max_steps=1, progress=False)


# ---------------------------------------------------------------- the word-ppl formula, no corpus needed


def test_word_perplexity_formula_on_a_synthetic_stream():
    bos = 0
    tokens = np.array([bos, 5, 6, 2, 7, 2, bos, 8, 2])  # two documents; 2 is <eos>, counted as a word
    assert scored_words(tokens, 8, bos) == 7  # targets 1..8, the second BOS excluded
    assert scored_words(tokens, 3, bos) == 3  # a prefix (max_tokens)
    assert word_perplexity(7 * math.log(50), 7) == pytest.approx(50.0)
    assert word_perplexity(1e6, 1) == math.inf
    with pytest.raises(LmgolfError, match="no words"):
        word_perplexity(1.0, 0)


def test_word_perplexity_is_shown_only_when_set():
    plain = EvalResult(tokens=10, bytes=40, loss=2.0, bpb=0.72, seconds=0.1, context=8, stride=8)
    assert "word_ppl" not in plain.as_dict() and "perplexity" not in plain.format()
    assert plain.format().startswith("val loss") and plain.as_dict()["split"] == "val"
    worded = EvalResult(tokens=10, bytes=40, loss=2.0, bpb=0.72, seconds=0.1, context=8, stride=8,
                        split="test", word_ppl=math.exp(2.0))
    assert worded.as_dict()["word_ppl"] == pytest.approx(math.exp(2.0))
    assert worded.format().startswith("test loss") and "bits/byte | word perplexity 7.39 |" in worded.format()


# ---------------------------------------------------------------- PTB's official test split


def test_prepare_ptb_writes_the_test_split(ptb_data):
    root = ptb_root_or_skip()
    meta = load_meta(ptb_data)
    assert (ptb_data / "test.bin").is_file() and (ptb_data / "test_bytes.bin").is_file()
    assert meta["files"]["test"] == "test.bin" and meta["files"]["test_bytes"] == "test_bytes.bin"
    text = (root / "ptb" / "ptb.test.txt").read_text(encoding="utf-8")
    counts = meta["counts"]["test"]
    assert counts["documents"] == 1 and counts["bytes"] == len(text.encode("utf-8"))
    # every line is its words then <eos> (the newline), after one BOS: PTB's standard token count
    assert counts["tokens"] == 1 + sum(len(line.split()) + 1 for line in text.splitlines())
    assert "ptb.test.txt is the test split" in meta["corpus"]["split"]
    tokens, nbytes = DataFolder(ptb_data).split_tokens_and_bytes("test")
    assert len(tokens) == counts["tokens"] and int(nbytes.sum()) == counts["bytes"] and nbytes[0] == 0
    val_tokens, _ = DataFolder(ptb_data).split_tokens_and_bytes("val")
    assert len(val_tokens) == meta["counts"]["val"]["tokens"]  # val stays the official valid file


def test_eval_split_test_prints_word_perplexity(ptb_run, ptb_data, capsys):
    assert main(["eval", str(ptb_run.path), "--split", "test", "--max-tokens", "400", "--quiet"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    got = json.loads(lines[-1])
    assert lines[0].startswith("test loss") and "word perplexity" in lines[0]
    assert got["split"] == "test" and got["tokens"] == 400
    tokens, nbytes = DataFolder(ptb_data).split_tokens_and_bytes("test")
    direct = evaluate(ptb_run.model, tokens, nbytes, ptb_run.cfg.model.context, max_tokens=400, progress=False)
    assert got["bpb"] == pytest.approx(direct.bpb, rel=1e-6)
    words = int(np.count_nonzero(np.asarray(tokens[1:401]) != 0))  # BOS id 0; <eos> counts as a word
    assert got["word_ppl"] == pytest.approx(math.exp(direct.loss * direct.tokens / words), rel=1e-6)
    scored = api.score(ptb_run, split="test", mode="docs", max_tokens=400, progress=False)
    assert scored.result.split == "test" and scored.result.word_ppl == pytest.approx(got["word_ppl"], rel=1e-6)


def test_old_folder_without_test_split_still_scores_val(ptb_run, ptb_data, tmp_path, capsys):
    import shutil
    old = tmp_path / "old"
    shutil.copytree(ptb_data, old)
    (old / "test.bin").unlink()
    (old / "test_bytes.bin").unlink()
    meta = json.loads((old / "meta.json").read_text())
    del meta["counts"]["test"], meta["files"]["test"], meta["files"]["test_bytes"]
    (old / "meta.json").write_text(json.dumps(meta))
    folder = DataFolder(old)
    folder.check()
    assert folder.splits == ("val",)
    assert main(["eval", str(ptb_run.path), "--data", str(old), "--max-tokens", "200", "--quiet"]) == 0
    got = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert got["split"] == "val" and got["word_ppl"] > 1
    assert main(["eval", str(ptb_run.path), "--data", str(old), "--split", "test", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(old) in err and "no test split" in err


def test_meta_checks_a_present_counts_test(ptb_data, tmp_path):
    import shutil
    bad = tmp_path / "bad"
    shutil.copytree(ptb_data, bad)
    meta = json.loads((bad / "meta.json").read_text())
    meta["counts"]["test"]["bytes"] += 1
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(LmgolfError, match="counts.test.bytes"):
        DataFolder(bad).split_tokens_and_bytes("test")
    del meta["counts"]["test"]["tokens"]
    (bad / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(LmgolfError, match="field counts.test.tokens: missing"):
        load_meta(bad)


def test_folder_without_a_test_split_is_refused_in_one_line(byte_data, tmp_path, capsys, one_thread):
    run = api.train(tmp_path / "run", preset="cpu-demo", data=byte_data, overrides=TINY, max_steps=1, progress=False)
    assert main(["eval", str(run.path), "--split", "test", "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(byte_data) in err and "no test split" in err
    scored = api.score(run, max_tokens=100, progress=False)
    assert scored.result.word_ppl is None and "word_ppl" not in scored.as_dict()  # a byte tokenizer
    with pytest.raises(api.ArgumentError, match="baselines"):
        api.score(run, split="test", baselines=True)
    with pytest.raises(api.ArgumentError, match="split"):
        api.score(run, split="train")
