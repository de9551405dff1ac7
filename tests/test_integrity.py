"""Score integrity: evaluation and training re-check what they read from a data folder (docs/data.md,
"What is verified"). Every altered folder is refused with a one-line error naming the file, exit code 2,
and nothing written; an untouched folder scores exactly as before."""

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import assert_one_line_error, cli
from lmgolf.cli import main
from lmgolf.data.shards import HEADER_SIZE, read_shard, write_shard

pytestmark = pytest.mark.usefixtures("one_thread")

TINY = ["--preset", "cpu-demo", "--quiet", "--max-steps", "2", "model.n_layer=1", "model.d_model=32", "model.n_head=2",
        "model.context=32", "train.batch_tokens=128", "train.micro_batch=4"]




def snapshot(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def trained(byte_data, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("integrity") / "run"
    assert main(["train", "--data", str(byte_data), "--out", str(out), *TINY]) == 0
    return out


@pytest.fixture
def data(byte_data, tmp_path) -> Path:
    """A private copy of the shared data folder, to alter."""
    return Path(shutil.copytree(byte_data, tmp_path / "data"))


def meta_of(folder: Path) -> dict:
    return json.loads((folder / "meta.json").read_text())


def rewrite(path: Path, values, folder: Path, kind: str) -> None:
    """The shard with new values and a valid checksum: only the cross-checks against meta.json can tell."""
    write_shard(path, values, meta_of(folder)["tokenizer"]["fingerprint"], kind, read_shard(path).dtype)


def flip_byte(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + offset] ^= 1
    path.write_bytes(bytes(raw))


def eval_refused(capsys, trained, data, *fragments):
    before = snapshot(trained)
    code, out, err = cli(capsys, "eval", trained, "--data", data, "--quiet")
    assert_one_line_error(code, err, *fragments)
    assert out == "" and snapshot(trained) == before


def train_refused(capsys, tmp_path, data, *fragments):
    code, _, err = cli(capsys, "train", "--data", data, "--out", tmp_path / "r", *TINY)
    assert_one_line_error(code, err, *fragments)
    assert not (tmp_path / "r").exists()


def test_val_bytes_edited_with_a_valid_checksum_is_refused(capsys, tmp_path, trained, data):
    nbytes = np.array(read_shard(data / "val_bytes.bin"), dtype=np.int64)
    nbytes[1] -= 1  # the altered count that used to score better
    rewrite(data / "val_bytes.bin", nbytes, data, "bytes")
    eval_refused(capsys, trained, data, "val_bytes.bin", "counts.val.bytes")
    train_refused(capsys, tmp_path, data, "val_bytes.bin", "counts.val.bytes")


def test_val_bytes_changed_in_place_fails_its_checksum(capsys, trained, data):
    flip_byte(data / "val_bytes.bin", 2)
    eval_refused(capsys, trained, data, "val_bytes.bin", "checksum mismatch")


def test_a_flipped_val_token_fails_its_checksum(capsys, tmp_path, trained, data):
    flip_byte(data / "val.bin", 11)
    eval_refused(capsys, trained, data, "val.bin", "checksum mismatch")
    train_refused(capsys, tmp_path, data, "val.bin", "checksum mismatch")


def test_a_flipped_train_token_fails_its_checksum(capsys, tmp_path, data):
    flip_byte(data / "train.bin", 101)
    train_refused(capsys, tmp_path, data, "train.bin", "checksum mismatch")


def test_an_out_of_range_id_in_train_bin(capsys, tmp_path, data):
    vocab = meta_of(data)["tokenizer"]["vocab_size"]
    tokens = np.array(read_shard(data / "train.bin"), dtype=np.int64)
    tokens[50] = vocab
    rewrite(data / "train.bin", tokens, data, "tokens")
    train_refused(capsys, tmp_path, data, "train.bin", f"token id {vocab} is outside the vocabulary of {vocab}")


def test_an_out_of_range_id_in_val_bin(capsys, tmp_path, trained, data):
    vocab = meta_of(data)["tokenizer"]["vocab_size"]
    tokens = np.array(read_shard(data / "val.bin"), dtype=np.int64)
    tokens[7] = vocab + 3
    rewrite(data / "val.bin", tokens, data, "tokens")
    eval_refused(capsys, trained, data, "val.bin", f"token id {vocab + 3} is outside the vocabulary")
    train_refused(capsys, tmp_path, data, "val.bin", "outside the vocabulary")


def test_evaluate_refuses_ids_outside_the_models_vocabulary(trained):
    from lmgolf.errors import LmgolfError
    from lmgolf.eval.evaluate import evaluate
    from lmgolf.training.checkpoint import load_model
    model = load_model(trained)[0]
    tokens = np.array([0, 1, model.cfg.vocab_size, 2])
    with pytest.raises(LmgolfError, match="outside the model's vocabulary"):
        evaluate(model, tokens, np.ones(4, dtype=np.int64), model.cfg.context, progress=False)


def test_val_token_count_must_match_meta(capsys, trained, data):
    tokens = np.array(read_shard(data / "val.bin"), dtype=np.int64)
    nbytes = np.array(read_shard(data / "val_bytes.bin"), dtype=np.int64)
    rewrite(data / "val.bin", tokens[:-1], data, "tokens")
    rewrite(data / "val_bytes.bin", np.concatenate([nbytes[:-2], [nbytes[-2:].sum()]]), data, "bytes")
    eval_refused(capsys, trained, data, "val.bin", "counts.val.tokens")


def test_tokenizer_changed_after_prepare(capsys, tmp_path, trained, data):
    from lmgolf.data.tokenizers import train_tokenizer
    shutil.rmtree(data / "tokenizer")
    train_tokenizer("char", ["an entirely different alphabet"]).save(data / "tokenizer")
    train_refused(capsys, tmp_path, data, "tokenizer", "changed after the data was prepared")
    eval_refused(capsys, trained, data, "tokenizer", "changed after the data was prepared")


def test_meta_vocab_size_edited(capsys, tmp_path, trained, data):
    meta = meta_of(data)
    meta["tokenizer"]["vocab_size"] += 5
    (data / "meta.json").write_text(json.dumps(meta))
    train_refused(capsys, tmp_path, data, "meta.json", "tokenizer.vocab_size")
    eval_refused(capsys, trained, data, "meta.json", "tokenizer.vocab_size")


def test_an_untouched_folder_scores_exactly_as_before(trained, byte_data, data):
    """The checks change no figure: the score equals evaluate() on the raw payloads, read past every check."""
    from lmgolf import api
    from lmgolf.eval.evaluate import evaluate

    def raw(path):
        return np.fromfile(path, dtype=read_shard(path).dtype, offset=HEADER_SIZE)

    loaded = api.load(trained, data, device="cpu")
    expected = evaluate(loaded.model, raw(data / "val.bin"), raw(data / "val_bytes.bin"),
                        loaded.cfg.model.context, progress=False)
    for folder in (byte_data, data):
        assert api.score(trained, folder, device="cpu", progress=False).bpb == expected.bpb


def test_a_folder_written_before_checksums_still_loads(capsys, tmp_path, trained, byte_data, data):
    """Shards of the earlier layout (zeros where the checksum now is) load with a note, and score the same."""
    from lmgolf import api
    for name in ("train.bin", "val.bin", "val_bytes.bin"):
        raw = bytearray((data / name).read_bytes())
        raw[60:96] = bytes(36)
        (data / name).write_bytes(bytes(raw))
    old = api.score(trained, data, device="cpu", progress=False).bpb
    assert "no checksum" in capsys.readouterr().err
    assert old == api.score(trained, byte_data, device="cpu", progress=False).bpb
    code, _, _ = cli(capsys, "train", "--data", data, "--out", tmp_path / "r", *TINY)
    assert code == 0
