"""lmgolf eval --text: any text scored with the model's own tokenizer, exactly as a data folder's val split."""

import gzip
import json

import numpy as np
import pytest

from lmgolf import api
from lmgolf.data.corpora import load_corpus
from lmgolf.data.folder import DataFolder
from lmgolf.data.tokenizers import train_tokenizer
from lmgolf.errors import LmgolfError
from lmgolf.eval.evaluate import evaluate

from conftest import assert_one_line_error, cli, make_text



@pytest.fixture(scope="module")
def val_documents(small_corpus):
    """The documents of byte_data's val split, as prepare_data split them."""
    return load_corpus(str(small_corpus), val_fraction=0.1, seed=0).val


def same(a, b):
    assert (a.result.tokens, a.result.bytes) == (b.result.tokens, b.result.bytes)
    assert a.result.loss == pytest.approx(b.result.loss, rel=1e-6) and a.bpb == pytest.approx(b.bpb, rel=1e-6)


@pytest.mark.parametrize("options", [{}, {"stride": 8}, {"mode": "docs"}, {"max_tokens": 500}])
def test_the_val_documents_as_text_score_as_the_data_folders_val_split(api_run, val_documents, tmp_path, options):
    jsonl = tmp_path / "val.jsonl"
    jsonl.write_text("".join(json.dumps({"text": d}) + "\n" for d in val_documents))
    folder = tmp_path / "val"
    folder.mkdir()
    for i, document in enumerate(val_documents):
        (folder / f"doc{i:03d}.txt").write_text(document)
    expected = api.score(api_run, progress=False, **options)
    for text in (jsonl, folder):
        got = api.score(api_run, text=text, progress=False, **options)
        same(got, expected)
        assert got.text == str(text) and got.as_dict()["text"] == str(text)


def test_a_text_file_is_one_document_whose_byte_counts_sum_to_its_size(api_run, tmp_path):
    text = make_text(400, seed=99) + "naïve café ✓\n"
    path = tmp_path / "mine.md"  # any file name: read as UTF-8 text
    path.write_text(text)
    got = api.score(api_run, text=path, progress=False)
    assert got.bytes == len(text.encode()) and got.total_bpb is None
    tok = DataFolder(api_run.data).tokenizer()
    ids, nbytes = tok.encode_with_bytes(text)
    tokens, counts = np.concatenate([[tok.bos_id], ids]), np.concatenate([[0], nbytes])
    direct = evaluate(api_run.model, tokens, counts, api_run.cfg.model.context, bos_id=tok.bos_id, progress=False)
    assert got.result.loss == pytest.approx(direct.loss, rel=1e-6) and got.bytes == direct.bytes
    assert f"text {path}: {len(text.encode()):,} bytes coded in" in got.format()
    gz = tmp_path / "mine.txt.gz"
    gz.write_bytes(gzip.compress(text.encode()))
    same(api.score(api_run, text=gz, progress=False), got)


def test_an_artifact_reports_the_total_description_length_of_the_text(api_artifact, tmp_path, capsys):
    path = tmp_path / "mine.txt"
    path.write_text(make_text(300, seed=5))
    got = api.score(api_artifact, text=path, progress=False)
    n = len(path.read_bytes())
    assert got.total_bpb == pytest.approx((api_artifact.stat().st_size * 8 + got.bpb * n) / n)
    code, out, err = cli(capsys, "eval", api_artifact, "--text", path, "--quiet", "--device", "cpu")
    assert code == 0 and "x 8 +" in out and f"{n:,} text bytes" in out
    assert json.loads(out.splitlines()[-1])["total_bpb"] == pytest.approx(got.total_bpb)


def test_bad_text_is_a_one_line_error_naming_the_file(api_run, tmp_path, capsys):
    empty, binary, big, blank = tmp_path / "empty.txt", tmp_path / "photo.jpg", tmp_path / "big.txt", tmp_path / "blank"
    empty.write_text("")
    binary.write_bytes(b"\xff\xd8\xff\xe0\x00\x10JFIF\x00\x01")
    big.write_text("x" * 1000)
    blank.mkdir()
    for path, fragment in [(tmp_path / "missing.txt", "no such file"), (empty, "no text"), (binary, "not valid UTF-8"),
                           (blank, "no .txt"), (big, "over the limit of 100")]:
        code, out, err = cli(capsys, "eval", api_run.path, "--text", path, "--max-text-bytes", 100, "--quiet")
        assert_one_line_error(code, err, str(path), fragment)
    code, out, err = cli(capsys, "eval", api_run.path, "--text", big, "--baselines", "--quiet")
    assert_one_line_error(code, err, "eval --baselines")
    code, out, err = cli(capsys, "eval", api_run.path, "--text", big, "--max-text-bytes", 0, "--quiet")
    assert_one_line_error(code, err, "eval --max-text-bytes")


def test_text_a_lossy_tokenizer_cannot_encode_is_refused(api_run, tmp_path):
    loaded = api.load(api_run.path, device="cpu")
    chars = train_tokenizer("char", ["abc xyz\n"])
    lossy = api.Loaded(loaded.model, loaded.cfg, chars, None)
    ok, unseen = tmp_path / "ok.txt", tmp_path / "unseen.txt"
    ok.write_text("abc zyx\n")
    unseen.write_text("abc ✓\n")
    assert api.score(lossy, text=ok, progress=False).bytes == 8
    with pytest.raises(LmgolfError, match="unseen.txt: the model's char tokenizer is lossy"):
        api.score(lossy, text=unseen, progress=False)
