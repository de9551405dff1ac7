"""The codec table: the compressors an artifact's payload may use, by name and by the id stored in it.

A leaf module: config validates `pack.codec` against it and lmgolf.packing.artifact compresses with it.
Decompression is streamed: `Codec.reader(data).read(n)` inflates at most about n bytes at a time, so a
small hostile file never inflates past what the reader asks for.
"""

from __future__ import annotations

import lzma
import zlib
from dataclasses import dataclass
from typing import Callable

import zstandard

try:
    import brotli
except ImportError:  # optional: the brotli codec is offered only where the package is installed
    brotli = None

CHUNK = 1 << 22  # the most output one step of a decompressor makes


class Reader:
    """A decompressing stream; read(n) returns n bytes, fewer only where the stream ends first, and
    raises ValueError on corrupt input whatever the library raises."""

    def __init__(self, step: Callable[[int], bytes], errors: tuple):
        self.step, self.errors, self.buf = step, errors, bytearray()

    def read(self, n: int) -> bytearray:
        out, self.buf = self.buf, bytearray()
        try:
            while len(out) < n:
                piece = self.step(min(n - len(out), CHUNK))
                if not piece:
                    break
                out += piece
        except self.errors as e:
            raise ValueError(e) from None
        self.buf = out[n:]
        del out[n:]
        return out


def _zlib(data: bytes) -> Reader:
    d, rest = zlib.decompressobj(), [data]

    def step(n):
        out = d.decompress(rest[0], n)
        rest[0] = d.unconsumed_tail
        return out
    return Reader(step, (zlib.error,))


def _fed_once(d, call, finished) -> Callable[[bytes], Callable[[int], bytes]]:
    """A step for decompressors given all input at the first call, then drained with empty input."""
    def make(data):
        rest = [data]

        def step(n):
            if finished(d):
                return b""
            out, rest[0] = call(d, rest[0], n), b""
            return out
        return step
    return make


def _lzma(data: bytes) -> Reader:
    d = lzma.LZMADecompressor()
    return Reader(_fed_once(d, lambda d, b, n: d.decompress(b, n), lambda d: d.eof)(data), (lzma.LZMAError, EOFError))


def _zstd(data: bytes) -> Reader:
    return Reader(zstandard.ZstdDecompressor().stream_reader(data).read, (zstandard.ZstdError,))


def _brotli(data: bytes) -> Reader:
    d = brotli.Decompressor()
    return Reader(_fed_once(d, lambda d, b, n: d.process(b, output_buffer_limit=n), lambda d: d.is_finished())(data),
                  (brotli.error,))


@dataclass(frozen=True)
class Codec:
    id: int
    compress: Callable[[bytes], bytes]
    reader: Callable[[bytes], Reader]

    def decompress(self, data: bytes, limit: int) -> bytes:
        """The whole stream; ValueError if it is corrupt or inflates past `limit` bytes."""
        r = self.reader(data)
        out = r.read(limit)
        if r.read(1):
            raise ValueError(f"it inflates past the limit of {limit:,} bytes")
        return bytes(out)


CODECS = {
    "zlib": Codec(1, lambda b: zlib.compress(b, 9), _zlib),
    "lzma": Codec(2, lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), _lzma),
    "zstd": Codec(3, lambda b: zstandard.ZstdCompressor(level=22).compress(b), _zstd),
}
OPTIONAL_CODECS = {"brotli": 4}  # name -> id, for the message when the package is missing
if brotli is not None:  # window 2^24: a whole 16 MB payload can refer back to its start
    CODECS["brotli"] = Codec(4, lambda b: brotli.compress(b, quality=11, lgwin=24), _brotli)


def codec_by_id(codec_id: int) -> tuple[str, Codec] | None:
    return next(((name, c) for name, c in CODECS.items() if c.id == codec_id), None)


def missing_codec_message(name: str) -> str:
    return f"the {name} codec needs the {name} package (pip install {name})"
