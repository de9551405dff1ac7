"""Token shards on disk: lmgolf's own `.bin` format (written and read) and Parameter Golf `.bin` shards (read).

lmgolf shard = a 256-byte little-endian header, then `count` values (uint16 or uint32):

    offset  size  field
         0     8  magic b"LMGSHARD"
         8     4  version (u32) = 1
        12     4  dtype code (u32): 2 = uint16, 4 = uint32
        16     8  count (u64): number of values
        24    32  tokenizer fingerprint (raw sha256 bytes)
        56     4  content kind (u32): 0 = token ids, 1 = per-token byte counts
        60     4  checksum kind (u32): 0 = none (shards written before checksums), 1 = sha256 of the payload
        64    32  the payload's sha256 (raw bytes; zeros when the checksum kind is 0)
        96   160  zeros

read_shard verifies the checksum while reading the payload once, in chunks, and remembers the verdict for
the process (keyed by path, size, mtime, ctime and inode), so a shard is hashed at most once per process.
"""

from __future__ import annotations

import hashlib
import os
import struct
import sys
import tempfile
from pathlib import Path

import numpy as np

from lmgolf.errors import LmgolfError
from lmgolf.runfiles import atomic_write_bytes, use_default_permissions

MAGIC = b"LMGSHARD"
VERSION = 1
HEADER_SIZE = 256
HEADER = struct.Struct("<8sIIQ32sII32s")
SHA256 = 1  # checksum kind
CHUNK_BYTES = 1 << 24  # payloads are hashed and range-checked in chunks of this many bytes
DTYPE_BY_CODE = {2: np.dtype("<u2"), 4: np.dtype("<u4")}
KIND_CODES = {"tokens": 0, "bytes": 1}

PG_MAGIC = 20240520
PG_VERSION = 1
PG_HEADER_INTS = 256
PG_HEADER_SIZE = PG_HEADER_INTS * 4


def fingerprint_bytes(fingerprint: str) -> bytes:
    try:
        raw = bytes.fromhex(fingerprint)
    except (ValueError, TypeError):
        raw = b""
    if len(raw) != 32:
        raise LmgolfError(f"fingerprint: expected 64 hex characters (a sha256), got {fingerprint!r}")
    return raw


def kind_code(kind: str) -> int:
    if kind not in KIND_CODES:
        raise LmgolfError(f"kind: expected one of {', '.join(KIND_CODES)}, got {kind!r}")
    return KIND_CODES[kind]


def dtype_for_max(max_value: int) -> np.dtype:
    """The smallest shard dtype that holds values up to `max_value`: uint16 up to 65535, else uint32."""
    if max_value < 2**16:
        return DTYPE_BY_CODE[2]
    if max_value < 2**32:
        return DTYPE_BY_CODE[4]
    raise LmgolfError(f"values: {max_value} does not fit in uint32")


def dtype_for_vocab(vocab_size: int) -> np.dtype:
    """uint16 when every id of a vocabulary of this size fits (vocab_size <= 65536), else uint32."""
    return dtype_for_max(vocab_size - 1)


def shard_dtype(dtype) -> np.dtype:
    wanted = np.dtype(dtype).newbyteorder("<")
    for allowed in DTYPE_BY_CODE.values():
        if wanted == allowed:
            return allowed
    raise LmgolfError(f"dtype: shards hold uint16 or uint32 values, not {np.dtype(dtype)}")


def encode_header(dtype: np.dtype, count: int, fingerprint: str, kind: str, sha256: bytes = bytes(32)) -> bytes:
    code = dtype.itemsize
    header = HEADER.pack(MAGIC, VERSION, code, count, fingerprint_bytes(fingerprint), kind_code(kind), SHA256, sha256)
    return header.ljust(HEADER_SIZE, b"\0")


class ShardWriter:
    """Streams values into a shard: `append` chunks, then `close` fixes the count and renames into place.

    Nothing appears at `path` until `close` succeeds; `abort` (or leaving a `with` block by an
    exception) removes the temp file.
    """

    def __init__(self, path: str | Path, fingerprint: str, kind: str = "tokens", dtype=np.uint16):
        self.path = Path(path)
        self.dtype = shard_dtype(dtype)
        self.fingerprint = fingerprint
        self.kind = kind
        self.count = 0
        self.digest = hashlib.sha256()
        encode_header(self.dtype, 0, fingerprint, kind)  # validates fingerprint and kind before any file exists
        handle, self.temp_name = tempfile.mkstemp(dir=self.path.parent, prefix=f".{self.path.name}.", suffix=".tmp")
        self.file = os.fdopen(handle, "wb")
        self.file.write(bytes(HEADER_SIZE))

    def append(self, values) -> None:
        values = np.asarray(values)
        if values.size == 0:
            return
        if values.dtype.kind not in "ui":
            raise LmgolfError(f"{self.path}: shard values must be integers, got {values.dtype}")
        low, high = int(values.min()), int(values.max())
        if low < 0 or high > np.iinfo(self.dtype).max:
            raise LmgolfError(f"{self.path}: value {low if low < 0 else high} does not fit in {self.dtype.name}")
        payload = values.astype(self.dtype, copy=False).ravel().tobytes()
        self.digest.update(payload)
        self.file.write(payload)
        self.count += values.size

    def close(self) -> None:
        try:
            self.file.seek(0)
            self.file.write(encode_header(self.dtype, self.count, self.fingerprint, self.kind, self.digest.digest()))
            self.file.flush()
            os.fsync(self.file.fileno())
            self.file.close()
            use_default_permissions(self.temp_name)
            os.replace(self.temp_name, self.path)
        except BaseException:
            self.abort()
            raise

    def abort(self) -> None:
        self.file.close()
        if os.path.exists(self.temp_name):
            os.unlink(self.temp_name)

    def __enter__(self) -> ShardWriter:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        if error_type is None:
            self.close()
        else:
            self.abort()


def write_shard(path: str | Path, values: np.ndarray, fingerprint: str, kind: str = "tokens", dtype=None) -> None:
    """Write `values` as one shard, atomically. dtype None picks uint16 when the largest value fits, else uint32."""
    values = np.asarray(values)
    if dtype is None:
        dtype = dtype_for_max(int(values.max()) if values.size else 0)
    with ShardWriter(path, fingerprint, kind, dtype) as writer:
        writer.append(values)


def read_header(path: Path, file_size: int) -> tuple[np.dtype, int, str, str, bytes | None]:
    """(dtype, count, fingerprint hex, kind, payload sha256 or None) from a shard's header, every field checked."""
    if file_size < HEADER_SIZE:
        raise LmgolfError(f"{path}: truncated shard ({file_size} bytes, shorter than the {HEADER_SIZE}-byte header)")
    with open(path, "rb") as file:
        magic, version, code, count, fingerprint, kind, checksum_kind, sha256 = HEADER.unpack(file.read(HEADER.size))
    if magic != MAGIC:
        raise LmgolfError(f"{path}: not an lmgolf shard (bad magic {magic!r})")
    if version != VERSION:
        raise LmgolfError(f"{path}: unsupported shard version {version} (this lmgolf reads version {VERSION})")
    if code not in DTYPE_BY_CODE:
        raise LmgolfError(f"{path}: unknown dtype code {code}")
    kinds = {number: name for name, number in KIND_CODES.items()}
    if kind not in kinds:
        raise LmgolfError(f"{path}: unknown content kind {kind}")
    if checksum_kind not in (0, SHA256):
        raise LmgolfError(f"{path}: unknown checksum kind {checksum_kind}")
    return DTYPE_BY_CODE[code], count, fingerprint.hex(), kinds[kind], sha256 if checksum_kind else None


def map_values(path: Path, dtype: np.dtype, offset: int, count: int) -> np.ndarray:
    """A read-only memmap of the values (numpy cannot map zero bytes, so an empty shard gives an empty array)."""
    if count == 0:
        return np.zeros(0, dtype=dtype)
    return np.memmap(path, dtype=dtype, mode="r", offset=offset, shape=(count,))


_VERIFIED: dict[tuple, tuple[int, bool]] = {}  # (path, size, mtime, ctime, inode) -> (largest value, checksum checked)


def scan_payload(path: Path, dtype: np.dtype, count: int, sha256: bytes | None) -> int:
    """Reads the payload once, in chunks: checks its sha256 (when the header has one); returns the largest value."""
    digest, largest, left = hashlib.sha256(), 0, count * dtype.itemsize
    buffer = memoryview(bytearray(min(CHUNK_BYTES, left)))
    with open(path, "rb") as file:
        file.seek(HEADER_SIZE)
        while left:
            got = file.readinto(buffer[:min(len(buffer), left)])
            if not got:
                raise LmgolfError(f"{path}: truncated shard (the file ended while reading it)")
            digest.update(buffer[:got])
            largest = max(largest, int(np.frombuffer(buffer[:got], dtype=dtype).max()))
            left -= got
    if sha256 is not None and digest.digest() != sha256:
        raise LmgolfError(f"{path}: checksum mismatch: its values changed after it was written "
                          f"(payload sha256 {digest.hexdigest()[:12]}…, header {sha256.hex()[:12]}…); prepare the data again")
    return largest


def read_shard(path: str | Path, expect_fingerprint: str | None = None, expect_kind: str | None = None,
               below: int | None = None, verify: bool = True) -> np.memmap:
    """The values of a shard as a read-only memmap, after checking the header, the size, and what is expected.

    verify: read the payload once (per process and file version) to check its checksum. below: every value
    must be smaller (a vocabulary size); checked in the same pass."""
    path = Path(path)
    try:
        stat = path.stat()
    except OSError as error:
        raise LmgolfError(f"{path}: cannot read shard ({error.strerror or error})") from None
    file_size = stat.st_size
    dtype, count, fingerprint, kind, sha256 = read_header(path, file_size)
    expected_size = HEADER_SIZE + count * dtype.itemsize
    if file_size != expected_size:
        raise LmgolfError(f"{path}: truncated or padded shard ({file_size} bytes; the header's {count} "
                          f"{dtype.name} values need {expected_size})")
    if expect_fingerprint is not None and fingerprint != expect_fingerprint.lower():
        raise LmgolfError(f"{path}: tokenized with a different tokenizer (shard fingerprint {fingerprint[:12]}…, "
                          f"expected {expect_fingerprint[:12]}…)")
    if expect_kind is not None and kind != expect_kind:
        raise LmgolfError(f"{path}: holds {kind}, expected {expect_kind}")
    key = (str(path.resolve()), file_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino)
    done = _VERIFIED.get(key)  # (largest value, checksum checked)
    if count and (verify or below is not None) and (done is None or (verify and not done[1])):
        if sha256 is None and verify:
            print(f"note: {path}: no checksum (written by an earlier lmgolf), so its values are not verified; "
                  f"prepare the data again to add one", file=sys.stderr)
        done = _VERIFIED[key] = (scan_payload(path, dtype, count, sha256 if verify else None), verify)
    if count and below is not None and done[0] >= below:
        raise LmgolfError(f"{path}: token id {done[0]} is outside the vocabulary of {below} (ids 0..{below - 1})")
    return map_values(path, dtype, HEADER_SIZE, count)


def write_pg_shard(path: str | Path, tokens: np.ndarray) -> None:
    """A Parameter Golf shard (256 int32 header: magic, version, count; then uint16 tokens), atomically.

    lmgolf only reads these for training; the writer exists for tests and for exporting.
    """
    tokens = np.asarray(tokens)
    if tokens.size and (tokens.min() < 0 or tokens.max() >= 2**16):
        raise LmgolfError(f"{path}: Parameter Golf shards hold uint16 tokens")
    header = np.zeros(PG_HEADER_INTS, dtype="<i4")
    header[:3] = (PG_MAGIC, PG_VERSION, tokens.size)
    atomic_write_bytes(path, header.tobytes() + tokens.astype("<u2").tobytes())


def read_pg_shard(path: str | Path) -> np.memmap:
    """The uint16 tokens of a Parameter Golf shard as a read-only memmap, after checking header and size."""
    path = Path(path)
    try:
        file_size = path.stat().st_size
    except OSError as error:
        raise LmgolfError(f"{path}: cannot read shard ({error.strerror or error})") from None
    if file_size < PG_HEADER_SIZE:
        raise LmgolfError(f"{path}: truncated Parameter Golf shard ({file_size} bytes, header is {PG_HEADER_SIZE})")
    header = np.fromfile(path, dtype="<i4", count=3)
    magic, version, count = (int(value) for value in header)
    if magic != PG_MAGIC:
        raise LmgolfError(f"{path}: not a Parameter Golf shard (magic {magic}, expected {PG_MAGIC})")
    if version != PG_VERSION:
        raise LmgolfError(f"{path}: unsupported Parameter Golf shard version {version}")
    expected_size = PG_HEADER_SIZE + 2 * count
    if count < 0 or file_size != expected_size:
        raise LmgolfError(f"{path}: truncated or padded Parameter Golf shard ({file_size} bytes; "
                          f"{count} tokens need {expected_size})")
    return map_values(path, np.dtype("<u2"), PG_HEADER_SIZE, count)
