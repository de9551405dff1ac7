"""Classic compressors on the validation text, given the training text first, and total description length."""

import zlib

import numpy as np
import pytest

from lmgolf.eval.baselines import (CODECS, compressed_size, compressor_bpb, token_bytes, total_description_length, train_tail,
                              val_text)
from lmgolf.data.folder import DataFolder
from lmgolf.data.tokenizers import ByteTokenizer, CharTokenizer

TEXT = ("It was the best of times, it was the worst of times, it was the age of wisdom, it was the age of "
        "foolishness, it was the epoch of belief, it was the epoch of incredulity. ").encode() * 20


def test_each_codec_compresses_text_and_a_prefix_helps():
    val = TEXT[:1500]
    alone = compressor_bpb(val)
    primed = compressor_bpb(val, prefix=TEXT)
    assert set(alone) == set(CODECS)
    for codec in CODECS:
        assert 0 <= primed[codec] < alone[codec] < 8, codec


def test_bpb_is_the_extra_bytes_the_validation_text_costs():
    prefix, val = b"abc" * 500, b"the validation text, once"
    expected = (len(zlib.compress(prefix + val, 9)) - len(zlib.compress(prefix, 9))) * 8 / len(val)
    assert compressor_bpb(val, prefix, codecs=("zlib",))["zlib"] == expected
    assert compressed_size("bz2", val) > 0
    with pytest.raises(ValueError):
        compressed_size("rar", val)


def test_prefix_is_capped_to_its_last_bytes():
    prefix, val = bytes(range(256)) * 40 + TEXT, TEXT[:500]
    capped = compressor_bpb(val, prefix, max_prefix_bytes=1000)
    assert capped == compressor_bpb(val, prefix[-1000:], max_prefix_bytes=10**9)
    assert compressor_bpb(val, prefix, max_prefix_bytes=0) == compressor_bpb(val)


def test_token_bytes_decodes_documents_exactly():
    byte = ByteTokenizer()
    text = "héllo wörld ✓".encode()
    ids = np.array([256, *text[:4], 256, *text[4:]])
    assert token_bytes(byte, ids) == text  # a character split across documents still comes back whole
    char = CharTokenizer(sorted(set("abc ")))
    ids = np.array([0] + [char.encode("ab c")[i] for i in range(4)] + [0] + char.encode("cab"))
    assert token_bytes(char, ids) == b"ab ccab"


def test_val_text_and_train_tail_of_a_data_folder(byte_data):
    data = DataFolder(byte_data)
    tokens, nbytes = data.val_tokens_and_bytes()
    text, exact = val_text(data)
    assert exact and len(text) == nbytes.sum()
    assert text.decode("utf-8").split()[0].strip(".").lower() in {w.lower() for w in text.decode().split()}
    prefix, n_exact = val_text(data, max_tokens=100)
    assert n_exact and prefix == text[:nbytes[:101].sum()]
    tail = train_tail(data, 5000)
    assert len(tail) == 5000 and tail.decode("utf-8", errors="strict")
    assert train_tail(data, 0) == b""


def test_total_description_length():
    assert total_description_length(1000, 1.5, 16000) == pytest.approx((8000 + 24000) / 16000)
    assert total_description_length(0, 1.25, 10) == 1.25
