"""What a classic compressor reaches on the validation text, and total description length.

A compressor's bits per byte on the val text is measured the way a language model is: it may first read the
end of the training text. bpb = (len(C(prefix + val)) - len(C(prefix))) * 8 / len(val), prefix = the last
`max_prefix_bytes` bytes of the training text (default 8 MB; a window-limited codec gains nothing from more:
zlib sees 32 KB back, bz2 900 KB blocks, while lzma preset 9 (64 MB dictionary) and zstd 22 (128 MB window)
would use more at a much higher cost in time). Codecs: zlib level 9, lzma preset 9 | EXTREME, bz2 level 9,
zstd level 22 (the `zstandard` package).

The texts are the token streams decoded document by document with the data folder's tokenizer (BOS tokens
stand for no bytes); for lossless tokenizers (byte, gpt2, bpe, unigram) this is exactly the original text.
"""

from __future__ import annotations

import bz2
import lzma
import zlib

import numpy as np

CODECS = ("zlib", "lzma", "bz2", "zstd")
DEFAULT_PREFIX_BYTES = 8_000_000


def compressed_size(codec: str, data: bytes) -> int:
    if codec == "zlib":
        return len(zlib.compress(data, 9))
    if codec == "lzma":
        return len(lzma.compress(data, preset=9 | lzma.PRESET_EXTREME))
    if codec == "bz2":
        return len(bz2.compress(data, 9))
    if codec == "zstd":
        import zstandard
        return len(zstandard.ZstdCompressor(level=22).compress(data))
    raise ValueError(f"unknown codec {codec!r} (known: {', '.join(CODECS)})")


def compressor_bpb(val: bytes, prefix: bytes = b"", max_prefix_bytes: int = DEFAULT_PREFIX_BYTES,
                   codecs=CODECS) -> dict[str, float]:
    """Bits per byte each codec spends on `val` after reading the last max_prefix_bytes of `prefix`."""
    if not val:
        raise ValueError("compressor_bpb: empty validation text")
    prefix = prefix[len(prefix) - max_prefix_bytes:] if len(prefix) > max_prefix_bytes else prefix
    out = {}
    for codec in codecs:
        before = compressed_size(codec, prefix) if prefix else 0
        out[codec] = (compressed_size(codec, prefix + val) - before) * 8 / len(val)
    return out


def token_bytes(tokenizer, ids: np.ndarray) -> bytes:
    """The text bytes of a token stream, decoded document by document (split at BOS, which has no bytes)."""
    ids = np.asarray(ids, dtype=np.int64)
    cuts = np.flatnonzero(ids == tokenizer.bos_id)
    pieces = []
    for doc in np.split(ids, cuts):
        doc = doc[doc != tokenizer.bos_id]
        if not len(doc):
            continue
        if tokenizer.kind == "byte":
            pieces.append(doc.astype(np.uint8).tobytes())
        elif tokenizer.kind == "gpt2":
            pieces.append(tokenizer.encoding.decode_bytes(doc.tolist()))
        else:
            pieces.append(tokenizer.decode(doc).encode("utf-8"))
    return b"".join(pieces)


def val_text(data, max_tokens: int | None = None) -> tuple[bytes, bool]:
    """(the val text of tokens 0..n-1, whether its length matches val_bytes.bin: False for lossy tokenizers)."""
    tokens, nbytes = data.val_tokens_and_bytes()
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    text = token_bytes(data.tokenizer(), tokens[:n])
    return text, len(text) == int(np.asarray(nbytes[:n], dtype=np.int64).sum())


def train_tail(data, max_bytes: int = DEFAULT_PREFIX_BYTES) -> bytes:
    """The last max_bytes bytes of the decoded training text (decoding from a document start when one is near)."""
    if max_bytes <= 0:
        return b""
    tokens, tokenizer = data.train_tokens(), data.tokenizer()
    take = max_bytes // 4 + 1
    while True:
        tail = np.asarray(tokens[max(0, len(tokens) - take):])
        bos = np.flatnonzero(tail == tokenizer.bos_id)
        text = token_bytes(tokenizer, tail[bos[0]:] if len(bos) and bos[0] < len(tail) // 2 else tail)
        if len(text) >= max_bytes or take >= len(tokens):
            return text[-max_bytes:]
        take *= 2


def total_description_length(artifact_bytes: int, bpb: float, val_bytes: int) -> float:
    """Bits per val byte of the artifact plus the val text coded with it: (artifact_bytes * 8 + bpb * val_bytes) / val_bytes."""
    return (artifact_bytes * 8 + bpb * val_bytes) / val_bytes


def baseline_report(data, max_tokens: int | None = None, max_prefix_bytes: int = DEFAULT_PREFIX_BYTES) -> dict:
    """Each codec's bpb on the val text (as scored, up to max_tokens) with the training text's tail as prefix."""
    val, exact = val_text(data, max_tokens)
    prefix = train_tail(data, max_prefix_bytes)
    return {"val_bytes": len(val), "prefix_bytes": len(prefix), "exact_text": exact,
            "bpb": compressor_bpb(val, prefix, max_prefix_bytes)}
