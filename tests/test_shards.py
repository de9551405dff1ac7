import hashlib
import struct

import numpy as np
import pytest

from lmgolf.errors import LmgolfError
from lmgolf.data.shards import (HEADER_SIZE, ShardWriter, read_pg_shard, read_shard, write_pg_shard, write_shard)

FINGERPRINT = hashlib.sha256(b"tokenizer A").hexdigest()
OTHER_FINGERPRINT = hashlib.sha256(b"tokenizer B").hexdigest()


def leftovers(folder):
    return sorted(path.name for path in folder.iterdir() if path.name.startswith("."))


@pytest.mark.parametrize("max_value, itemsize", [(65535, 2), (65536, 4), (2**32 - 1, 4)])
def test_round_trip_picks_the_smallest_dtype(tmp_path, max_value, itemsize):
    values = np.array([0, 1, 7, max_value], dtype=np.int64)
    path = tmp_path / "x.bin"
    write_shard(path, values, FINGERPRINT)
    read = read_shard(path, expect_fingerprint=FINGERPRINT, expect_kind="tokens")
    assert isinstance(read, np.memmap)
    assert read.dtype.itemsize == itemsize
    assert path.stat().st_size == HEADER_SIZE + 4 * itemsize
    np.testing.assert_array_equal(read, values)
    assert leftovers(tmp_path) == []


def test_header_layout_is_as_documented(tmp_path):
    path = tmp_path / "x.bin"
    write_shard(path, np.arange(5), FINGERPRINT, kind="bytes", dtype=np.uint32)
    raw = path.read_bytes()
    magic, version, code, count = struct.unpack_from("<8sIIQ", raw, 0)
    assert (magic, version, code, count) == (b"LMGSHARD", 1, 4, 5)
    assert raw[24:56] == bytes.fromhex(FINGERPRINT)
    assert struct.unpack_from("<I", raw, 56)[0] == 1
    assert struct.unpack_from("<I", raw, 60)[0] == 1  # checksum kind: sha256 of the payload
    assert raw[64:96] == hashlib.sha256(np.arange(5, dtype="<u4").tobytes()).digest()
    assert raw[96:HEADER_SIZE] == bytes(HEADER_SIZE - 96)
    np.testing.assert_array_equal(np.frombuffer(raw[HEADER_SIZE:], dtype="<u4"), np.arange(5))


def test_streaming_writer_and_empty_shard(tmp_path):
    path = tmp_path / "s.bin"
    with ShardWriter(path, FINGERPRINT, dtype=np.uint16) as writer:
        writer.append(np.array([1, 2]))
        writer.append(np.array([], dtype=np.int64))
        writer.append(np.array([3]))
    np.testing.assert_array_equal(read_shard(path), [1, 2, 3])
    write_shard(tmp_path / "empty.bin", np.array([], dtype=np.int64), FINGERPRINT)
    assert len(read_shard(tmp_path / "empty.bin")) == 0


def test_failed_write_leaves_nothing(tmp_path):
    with pytest.raises(LmgolfError, match="does not fit"):
        with ShardWriter(tmp_path / "s.bin", FINGERPRINT, dtype=np.uint16) as writer:
            writer.append(np.array([1, 70000]))
    with pytest.raises(LmgolfError, match="fingerprint"):
        write_shard(tmp_path / "t.bin", np.arange(3), "not-hex")
    with pytest.raises(LmgolfError, match="dtype"):
        write_shard(tmp_path / "t.bin", np.arange(3), FINGERPRINT, dtype=np.int32)
    assert list(tmp_path.iterdir()) == []


def test_refuses_bad_magic(tmp_path):
    path = tmp_path / "x.bin"
    write_shard(path, np.arange(4), FINGERPRINT)
    path.write_bytes(b"NOTSHARD" + path.read_bytes()[8:])
    with pytest.raises(LmgolfError, match=f"{path.name}.*bad magic"):
        read_shard(path)


@pytest.mark.parametrize("cut", [-1, -2, 10])
def test_refuses_truncated(tmp_path, cut):
    path = tmp_path / "x.bin"
    write_shard(path, np.arange(4), FINGERPRINT)
    raw = path.read_bytes()
    path.write_bytes(raw[:cut])
    with pytest.raises(LmgolfError, match=f"{path.name}.*truncated"):
        read_shard(path)


def test_refuses_unknown_version_and_dtype(tmp_path):
    path = tmp_path / "x.bin"
    write_shard(path, np.arange(4), FINGERPRINT)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 8, 2)
    path.write_bytes(bytes(raw))
    with pytest.raises(LmgolfError, match="version 2"):
        read_shard(path)
    struct.pack_into("<II", raw, 8, 1, 8)
    path.write_bytes(bytes(raw))
    with pytest.raises(LmgolfError, match="dtype code 8"):
        read_shard(path)


def test_refuses_fingerprint_mismatch_and_wrong_kind(tmp_path):
    path = tmp_path / "x.bin"
    write_shard(path, np.arange(4), FINGERPRINT, kind="bytes")
    with pytest.raises(LmgolfError, match=f"{path.name}: tokenized with a different tokenizer"):
        read_shard(path, expect_fingerprint=OTHER_FINGERPRINT)
    with pytest.raises(LmgolfError, match=f"{path.name}: holds bytes, expected tokens"):
        read_shard(path, expect_kind="tokens")
    assert len(read_shard(path, expect_fingerprint=FINGERPRINT.upper(), expect_kind="bytes")) == 4


def test_missing_shard(tmp_path):
    with pytest.raises(LmgolfError, match="nope.bin"):
        read_shard(tmp_path / "nope.bin")


def test_pg_shard_round_trip_and_refusals(tmp_path):
    path = tmp_path / "fineweb_val_000000.bin"
    tokens = np.array([1, 500, 8191, 1, 42], dtype=np.uint16)
    write_pg_shard(path, tokens)
    raw = path.read_bytes()
    assert np.frombuffer(raw[:12], dtype="<i4").tolist() == [20240520, 1, 5]
    assert len(raw) == 1024 + 2 * 5
    read = read_pg_shard(path)
    assert isinstance(read, np.memmap) and read.dtype == np.uint16
    np.testing.assert_array_equal(read, tokens)

    path.write_bytes(raw[:-2])
    with pytest.raises(LmgolfError, match="truncated"):
        read_pg_shard(path)
    path.write_bytes(raw[:100])
    with pytest.raises(LmgolfError, match="truncated"):
        read_pg_shard(path)
    bad = bytearray(raw)
    struct.pack_into("<i", bad, 0, 12345)
    path.write_bytes(bytes(bad))
    with pytest.raises(LmgolfError, match="not a Parameter Golf shard"):
        read_pg_shard(path)
    struct.pack_into("<ii", bad, 0, 20240520, 7)
    path.write_bytes(bytes(bad))
    with pytest.raises(LmgolfError, match="version 7"):
        read_pg_shard(path)


def test_streamed_checksum_covers_every_chunk(tmp_path):
    path = tmp_path / "s.bin"
    with ShardWriter(path, FINGERPRINT, dtype=np.uint16) as writer:
        writer.append(np.arange(10))
        writer.append(np.arange(10, 20))
    assert path.read_bytes()[64:96] == hashlib.sha256(np.arange(20, dtype="<u2").tobytes()).digest()


def test_refuses_a_changed_value(tmp_path):
    path = tmp_path / "x.bin"
    write_shard(path, np.arange(100), FINGERPRINT)
    raw = bytearray(path.read_bytes())
    raw[HEADER_SIZE + 7] ^= 1
    path.write_bytes(bytes(raw))
    with pytest.raises(LmgolfError, match=f"{path.name}: checksum mismatch"):
        read_shard(path)
    assert len(read_shard(path, verify=False)) == 100  # the header alone is still well formed


def test_checksum_is_checked_in_chunks(tmp_path, monkeypatch):
    from lmgolf.data import shards
    monkeypatch.setattr(shards, "CHUNK_BYTES", 6)
    path = tmp_path / "x.bin"
    write_shard(path, np.arange(1000), FINGERPRINT)
    np.testing.assert_array_equal(read_shard(path, below=1000), np.arange(1000))
    raw = bytearray(path.read_bytes())
    raw[-1] ^= 1
    path.write_bytes(bytes(raw))
    monkeypatch.setattr(shards, "_VERIFIED", {})  # a rewrite within the clock's granularity keeps size and mtime
    with pytest.raises(LmgolfError, match="checksum mismatch"):
        read_shard(path)


def test_refuses_ids_outside_the_vocabulary(tmp_path):
    path = tmp_path / "x.bin"
    write_shard(path, np.array([0, 5, 9]), FINGERPRINT)
    assert len(read_shard(path, below=10)) == 3
    with pytest.raises(LmgolfError, match=f"{path.name}: token id 9 is outside the vocabulary of 9"):
        read_shard(path, below=9)
    with pytest.raises(LmgolfError, match="token id 9"):
        read_shard(path, below=9, verify=False)


def test_a_shard_without_checksum_still_loads(tmp_path, capsys):
    """Shards written before the checksum field (zeros at offsets 60..96) load, with a note."""
    path = tmp_path / "old.bin"
    write_shard(path, np.arange(4), FINGERPRINT)
    raw = bytearray(path.read_bytes())
    raw[60:96] = bytes(36)
    path.write_bytes(bytes(raw))
    np.testing.assert_array_equal(read_shard(path, expect_fingerprint=FINGERPRINT, below=4), np.arange(4))
    assert "no checksum" in capsys.readouterr().err
    with pytest.raises(LmgolfError, match="token id 3"):
        read_shard(path, below=3)


def test_unknown_checksum_kind(tmp_path):
    path = tmp_path / "x.bin"
    write_shard(path, np.arange(4), FINGERPRINT)
    raw = bytearray(path.read_bytes())
    struct.pack_into("<I", raw, 60, 7)
    path.write_bytes(bytes(raw))
    with pytest.raises(LmgolfError, match="unknown checksum kind 7"):
        read_shard(path)
