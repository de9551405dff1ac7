"""The codec table: the compressors an artifact's payload may use, by name and by the id stored in it.

A leaf module: config validates `pack.codec` against it and lmgolf.packing.artifact compresses with it.
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


def _checked(decompress: Callable[[bytes], bytes], *errors: type[Exception]) -> Callable[[bytes], bytes]:
    """The decompressor, raising ValueError on corrupt input whatever the library raises."""
    def run(data: bytes) -> bytes:
        try:
            return decompress(data)
        except errors as e:
            raise ValueError(e) from None
    return run


@dataclass(frozen=True)
class Codec:
    id: int
    compress: Callable[[bytes], bytes]
    decompress: Callable[[bytes], bytes]  # raises ValueError on corrupt input


CODECS = {
    "zlib": Codec(1, lambda b: zlib.compress(b, 9), _checked(zlib.decompress, zlib.error)),
    "lzma": Codec(2, lambda b: lzma.compress(b, preset=9 | lzma.PRESET_EXTREME), _checked(lzma.decompress, lzma.LZMAError)),
    "zstd": Codec(3, lambda b: zstandard.ZstdCompressor(level=22).compress(b),
                  _checked(lambda b: zstandard.ZstdDecompressor().decompress(b), zstandard.ZstdError)),
}
OPTIONAL_CODECS = {"brotli": 4}  # name -> id, for the message when the package is missing
if brotli is not None:  # window 2^24: a whole 16 MB payload can refer back to its start
    CODECS["brotli"] = Codec(4, lambda b: brotli.compress(b, quality=11, lgwin=24), _checked(brotli.decompress, brotli.error))


def codec_by_id(codec_id: int) -> tuple[str, Codec] | None:
    return next(((name, c) for name, c in CODECS.items() if c.id == codec_id), None)


def missing_codec_message(name: str) -> str:
    return f"the {name} codec needs the {name} package (pip install {name})"
