import json
import os
import random
import stat

import numpy as np
import pytest

from lmgolf.data.corpora import load_corpus
from lmgolf.errors import LmgolfError
from lmgolf.data.meta import load_meta
from lmgolf.data.prepare import import_pg_shards, prepare_data
from lmgolf.data.shards import read_shard, write_pg_shard


def utf8(text):
    return len(text.encode("utf-8"))


def split_at_bos(tokens, bos_id):
    """The documents of a BOS-delimited stream (each starts with BOS), without their BOS."""
    starts = np.flatnonzero(np.asarray(tokens) == bos_id)
    ends = list(starts[1:]) + [len(tokens)]
    return [np.asarray(tokens[start + 1:end]) for start, end in zip(starts, ends)]


def hidden_entries(folder):
    return [path.name for path in folder.iterdir() if path.name.startswith(".")]


def check_data_folder(out, corpus_arg, kind, val_fraction=0.1, seed=0):
    """Everything prepare promises about a data folder; returns (meta, tokenizer)."""
    from lmgolf.data.tokenizers import load_tokenizer

    meta = load_meta(out)
    corpus = load_corpus(corpus_arg, val_fraction=val_fraction, seed=seed)
    assert sorted(path.name for path in out.iterdir()) == ["meta.json", "tokenizer", "train.bin", "val.bin",
                                                          "val_bytes.bin"]
    assert meta["format"] == "lmgolf-data" and meta["bytes_rule"] == "utf-8"
    assert meta["corpus"]["name"] == corpus.name and meta["corpus"]["split"] == corpus.split
    assert meta["corpus"]["val_fraction"] == corpus.val_fraction and meta["corpus"]["seed"] == corpus.seed
    assert meta["corpus"]["sources"] == corpus.sources
    tokenizer = load_tokenizer(out / "tokenizer")
    assert meta["tokenizer"] == {"kind": kind, "vocab_size": tokenizer.vocab_size, "bos_id": tokenizer.bos_id,
                                 "fingerprint": tokenizer.fingerprint, "lossy": tokenizer.lossy}
    fingerprint = meta["tokenizer"]["fingerprint"]
    train = read_shard(out / "train.bin", expect_fingerprint=fingerprint, expect_kind="tokens")
    val = read_shard(out / "val.bin", expect_fingerprint=fingerprint, expect_kind="tokens")
    val_bytes = read_shard(out / "val_bytes.bin", expect_fingerprint=fingerprint, expect_kind="bytes")

    bos = tokenizer.bos_id
    for name, documents, tokens in (("train", corpus.train, train), ("val", corpus.val, val)):
        counts = meta["counts"][name]
        assert counts == {"documents": len(documents), "tokens": len(tokens),
                          "bytes": sum(utf8(document) for document in documents)}
        assert tokens[0] == bos and int(np.count_nonzero(tokens == bos)) == len(documents)
        segments = split_at_bos(tokens, bos)
        assert [segment.tolist() for segment in segments] == [tokenizer.encode(document) for document in documents]
        if not tokenizer.lossy:
            assert [tokenizer.decode(segment.tolist()) for segment in segments] == documents
    assert len(val_bytes) == len(val)
    assert int(val_bytes.sum()) == meta["counts"]["val"]["bytes"]
    assert np.all(val_bytes[val == bos] == 0)
    return meta, tokenizer


def test_byte_tokenizer_end_to_end(small_corpus, tmp_path):
    out = tmp_path / "data"
    meta = prepare_data(str(small_corpus), "byte", out, val_fraction=0.1, progress=False)
    assert meta == load_meta(out)
    check_data_folder(out, str(small_corpus), "byte")
    assert hidden_entries(tmp_path) == []
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(out.stat().st_mode) == 0o777 & ~umask
    for name in ("meta.json", "train.bin", "val.bin", "val_bytes.bin"):
        assert stat.S_IMODE((out / name).stat().st_mode) == 0o666 & ~umask, name


def test_char_tokenizer_trained_on_train_split_only(tmp_path):
    text = "abc abc abd. " * 400 + "the val part has zebras: \u00e9\u00e9 \u2603\n"
    corpus_file = tmp_path / "one.txt"
    corpus_file.write_text(text)
    out = tmp_path / "data"
    prepare_data(str(corpus_file), "char", out, val_fraction=0.01, progress=False)
    meta, tokenizer = check_data_folder(out, str(corpus_file), "char", val_fraction=0.01)
    assert meta["counts"]["train"]["documents"] == meta["counts"]["val"]["documents"] == 1
    from lmgolf.data.tokenizers import train_tokenizer

    split = load_corpus(str(corpus_file), val_fraction=0.01)
    assert "zebras" in split.val[0] and "z" not in split.train[0]
    assert tokenizer.fingerprint == train_tokenizer("char", split.train).fingerprint
    assert tokenizer.fingerprint != train_tokenizer("char", split.train + split.val).fingerprint


def test_bpe_tokenizer_end_to_end(small_corpus, tmp_path):
    pytest.importorskip("lmgolf.data.tokenizers")
    out = tmp_path / "data"
    prepare_data(str(small_corpus), "bpe", out, vocab_size=300, val_fraction=0.1, progress=False)
    meta, tokenizer = check_data_folder(out, str(small_corpus), "bpe")
    assert meta["tokenizer"]["vocab_size"] <= 300
    assert meta["counts"]["val"]["tokens"] < meta["counts"]["val"]["bytes"]


def test_progress_bar_goes_to_stderr_on_a_terminal(small_corpus, tmp_path, capsys, monkeypatch):
    import sys
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True, raising=False)
    prepare_data(str(small_corpus), "byte", tmp_path / "data", val_fraction=0.1, progress=True)
    captured = capsys.readouterr()
    assert "tokenizing" in captured.err and "tokenizing" not in captured.out


def test_empty_corpus_leaves_nothing(tmp_path):
    (tmp_path / "empty.txt").write_text("")
    with pytest.raises(LmgolfError, match="no text"):
        prepare_data(str(tmp_path / "empty.txt"), "byte", tmp_path / "data", progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["empty.txt"]


def test_failure_while_writing_leaves_nothing_and_keeps_the_old_folder(small_corpus, tmp_path, monkeypatch):
    import lmgolf.data.prepare as prepare

    out = tmp_path / "data"
    prepare_data(str(small_corpus), "byte", out, val_fraction=0.1, progress=False)
    before = {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()}

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(prepare, "write_val_tokens", broken)
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_data(str(small_corpus), "byte", out, val_fraction=0.1, progress=False, overwrite=True)
    assert {path.name: path.read_bytes() for path in out.iterdir() if path.is_file()} == before
    with pytest.raises(RuntimeError, match="disk full"):
        prepare_data(str(small_corpus), "byte", tmp_path / "fresh", val_fraction=0.1, progress=False)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["data"]


def test_overwrite_rules(small_corpus, tmp_path):
    out = tmp_path / "data"
    prepare_data(str(small_corpus), "byte", out, val_fraction=0.1, progress=False)
    with pytest.raises(LmgolfError, match="data: already exists and is not empty; pass --overwrite"):
        prepare_data(str(small_corpus), "byte", out, val_fraction=0.1, progress=False)
    meta = prepare_data(str(small_corpus), "byte", out, val_fraction=0.2, progress=False, overwrite=True)
    assert load_meta(out)["corpus"]["val_fraction"] == meta["corpus"]["val_fraction"] == 0.2
    other = tmp_path / "precious"
    other.mkdir()
    (other / "thesis.tex").write_text("do not delete")
    with pytest.raises(LmgolfError, match="precious: not an lmgolf data folder"):
        prepare_data(str(small_corpus), "byte", other, progress=False, overwrite=True)
    assert (other / "thesis.tex").read_text() == "do not delete"
    empty = tmp_path / "empty"
    empty.mkdir()
    prepare_data(str(small_corpus), "byte", empty, val_fraction=0.1, progress=False)
    assert (empty / "meta.json").is_file()
    assert hidden_entries(tmp_path) == []


def test_load_meta_errors_name_file_and_field(byte_data, tmp_path):
    with pytest.raises(LmgolfError, match="meta.json: missing; not an lmgolf data folder"):
        load_meta(tmp_path)
    meta = json.loads((byte_data / "meta.json").read_text())
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(LmgolfError, match="meta.json: not valid JSON"):
        load_meta(tmp_path)
    broken = json.loads(json.dumps(meta))
    del broken["tokenizer"]["fingerprint"]
    (tmp_path / "meta.json").write_text(json.dumps(broken))
    with pytest.raises(LmgolfError, match="meta.json: field tokenizer.fingerprint: missing"):
        load_meta(tmp_path)
    broken = json.loads(json.dumps(meta))
    broken["counts"]["val"]["bytes"] = "many"
    (tmp_path / "meta.json").write_text(json.dumps(broken))
    with pytest.raises(LmgolfError, match="meta.json: field counts.val.bytes: expected int"):
        load_meta(tmp_path)
    broken = json.loads(json.dumps(meta))
    broken["format"] = "something-else"
    (tmp_path / "meta.json").write_text(json.dumps(broken))
    with pytest.raises(LmgolfError, match="meta.json: field format"):
        load_meta(tmp_path)


# ---------------------------------------------------------------- Parameter Golf import

PG_WORDS = "the cat sat on a mat while seven small dogs ran past under blue skies and quiet hills".split()


def pg_documents(count, seed):
    rng = random.Random(seed)
    return [" ".join(rng.choice(PG_WORDS) for _ in range(rng.randint(5, 30))).capitalize() + "."
            for _ in range(count)]


@pytest.fixture(scope="module")
def pg_model(tmp_path_factory):
    """A tiny SentencePiece BPE model with Parameter Golf's special ids (pad 0, bos 1, eos 2, unk 3)."""
    spm = pytest.importorskip("sentencepiece")
    folder = tmp_path_factory.mktemp("pg_model")
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(pg_documents(300, seed=0)), model_prefix=str(folder / "sp"), model_type="bpe",
        vocab_size=320, byte_fallback=True, add_dummy_prefix=False, pad_id=0, bos_id=1, eos_id=2, unk_id=3,
        character_coverage=1.0, minloglevel=2)
    return folder / "sp.model"


def pg_stream(processor, documents):
    return np.concatenate([[processor.bos_id()] + processor.encode(document) for document in documents])


def test_import_pg_shards(pg_model, tmp_path):
    import sentencepiece as spm

    from lmgolf.data.tokenizers import count_bytes_pg, sentencepiece_token_bytes

    processor = spm.SentencePieceProcessor(model_file=str(pg_model))
    train_docs, val_docs = pg_documents(40, seed=1), pg_documents(12, seed=2)
    train, val = pg_stream(processor, train_docs), pg_stream(processor, val_docs)
    shards = tmp_path / "shards"
    shards.mkdir()
    cut = len(train) // 2 + 3  # the second train shard starts mid-document, as Parameter Golf's can
    write_pg_shard(shards / "fineweb_train_000000.bin", train[:cut])
    write_pg_shard(shards / "fineweb_train_000001.bin", train[cut:])
    write_pg_shard(shards / "fineweb_val_000000.bin", val)

    out = tmp_path / "data"
    meta = import_pg_shards(str(shards / "fineweb_train_*.bin"), str(shards / "fineweb_val_*.bin"), pg_model, out)
    assert meta == load_meta(out)
    assert meta["bytes_rule"] == "parameter-golf piece table"
    assert meta["tokenizer"]["bos_id"] == 1 and meta["tokenizer"]["vocab_size"] == 320
    fingerprint = meta["tokenizer"]["fingerprint"]
    np.testing.assert_array_equal(read_shard(out / "train.bin", fingerprint, "tokens"), train)
    np.testing.assert_array_equal(read_shard(out / "val.bin", fingerprint, "tokens"), val)
    val_bytes = read_shard(out / "val_bytes.bin", fingerprint, "bytes")
    expected = np.asarray(count_bytes_pg(val, sentencepiece_token_bytes(processor)))
    np.testing.assert_array_equal(val_bytes, expected)
    # single-spaced ASCII without a leading space: the piece table counts the text's bytes exactly
    assert int(val_bytes.sum()) == sum(utf8(document) for document in val_docs) == meta["counts"]["val"]["bytes"]
    assert meta["counts"]["train"]["bytes"] == sum(utf8(document) for document in train_docs)
    assert meta["counts"]["train"]["documents"] == 40 and meta["counts"]["val"]["documents"] == 12
    assert len(meta["corpus"]["sources"]) == 4
    assert hidden_entries(tmp_path) == []


def test_import_pg_refusals(pg_model, tmp_path):
    shards = tmp_path / "shards"
    shards.mkdir()
    write_pg_shard(shards / "val.bin", np.array([1, 50, 60]))
    with pytest.raises(LmgolfError, match="nothing_\\*.bin: no Parameter Golf shards match"):
        import_pg_shards(str(shards / "nothing_*.bin"), str(shards / "val.bin"), pg_model, tmp_path / "out")
    write_pg_shard(shards / "train.bin", np.array([1, 50, 5000]))
    with pytest.raises(LmgolfError, match="train.bin: token id 5000 is outside"):
        import_pg_shards(str(shards / "train.bin"), str(shards / "val.bin"), pg_model, tmp_path / "out")
    write_pg_shard(shards / "train.bin", np.array([50, 1, 60]))
    with pytest.raises(LmgolfError, match="train.bin: does not start with the model's BOS id 1"):
        import_pg_shards(str(shards / "train.bin"), str(shards / "val.bin"), pg_model, tmp_path / "out")
    with pytest.raises(LmgolfError, match="nope.model: SentencePiece model not found"):
        import_pg_shards(str(shards / "train.bin"), str(shards / "val.bin"), tmp_path / "nope.model",
                         tmp_path / "out")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["shards"]
