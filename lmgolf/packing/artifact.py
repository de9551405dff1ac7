"""The `.lmg` artifact: quantized weights, config and tokenizer in one compressed file, with no pickle.

File layout (docs/artifact.md has the full description):
  bytes 0-7    magic: b"LMGOLF\\x00" then the format version as one byte
  byte  8      codec id (1 zlib, 2 lzma, 3 zstd, 4 brotli)
  bytes 9-40   sha256 of the uncompressed payload (verified on load)
  bytes 41-    the compressed payload
Payload: u32 little-endian header length | UTF-8 JSON header | raw little-endian tensor blobs.

Each tensor is kept in a named *storage* (lmgolf.quantize.STORAGES): blobs + meta -> float32 weights.
A tensor may also carry a low-rank correction (blobs lowrank_a, lowrank_b) added on load. This module
reads and checks artifacts and holds the format's building blocks; lmgolf.packing.writer writes them.
"""

from __future__ import annotations

import base64
import hashlib
import json
import struct
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from lmgolf.codecs import CODECS, OPTIONAL_CODECS, codec_by_id, missing_codec_message
from lmgolf.config import Config, PackPolicy
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT
from lmgolf.quantize import STORAGES, shuffle_bytes, unshuffle_bytes

FORMAT_VERSION = 1
MAGIC = b"LMGOLF\x00"
PREAMBLE = len(MAGIC) + 1 + 1 + 32  # magic, version, codec id, sha256
BUDGET = 16_000_000  # the Parameter Golf limit: decimal bytes of artifact plus code
MAX_HEADER = 1 << 25  # bytes of JSON header; the blob section is bounded by the config's shapes

BLOB_DTYPES = {"int8": torch.int8, "uint8": torch.uint8, "int16": torch.int16, "int32": torch.int32,
               "float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
_DTYPE_NAMES = {v: k for k, v in BLOB_DTYPES.items()}


# ---------------------------------------------------------------------------------------------------
# Tensors <-> blob section


@dataclass
class Packed:
    """One tensor after quantization."""
    name: str
    shape: list[int]
    storage: str
    meta: dict
    blobs: dict[str, torch.Tensor]


def _tensor_bytes(t: torch.Tensor) -> bytes:
    return t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


def layout(packed: list[Packed], byte_shuffle: bool = False) -> tuple[list[dict], bytes]:
    """Header entries (with blob offsets into the blob section) and the blob section itself."""
    entries, chunks, offset = [], [], 0
    for p in packed:
        blob_entries = []
        for role, t in p.blobs.items():
            data = _tensor_bytes(t)
            entry = {"role": role, "dtype": _DTYPE_NAMES[t.dtype], "shape": list(t.shape),
                     "offset": offset, "length": len(data)}
            width = STORAGES[p.storage].period(role, p.meta) or t.element_size()
            if byte_shuffle and width > 1:
                data = shuffle_bytes(data, width)
                entry["shuffle"] = width
            blob_entries.append(entry)
            chunks.append(data)
            offset += len(data)
        entries.append({"name": p.name, "shape": p.shape, "storage": p.storage, "meta": p.meta, "blobs": blob_entries})
    return entries, b"".join(chunks)


def encode_payload(header: dict, blob_section: bytes) -> bytes:
    head = json.dumps(header, separators=(",", ":")).encode("utf-8")
    return struct.pack("<I", len(head)) + head + blob_section


def split_payload(payload: bytes, source: str) -> tuple[dict, memoryview]:
    if len(payload) < 4:
        raise LmgolfError(f"{source}: corrupt payload, too short for a header")
    (n,) = struct.unpack_from("<I", payload)
    if 4 + n > len(payload):
        raise LmgolfError(f"{source}: corrupt payload, header length {n} runs past the end")
    try:
        header = json.loads(payload[4:4 + n].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise LmgolfError(f"{source}: corrupt header ({e.__class__.__name__})") from None
    if not isinstance(header, dict):
        raise LmgolfError(f"{source}: corrupt header, expected a JSON object")
    return header, memoryview(payload)[4 + n:]


def _read_blob(entry: dict, blobs: memoryview, where: str) -> torch.Tensor:
    dtype = BLOB_DTYPES.get(entry.get("dtype"))
    shape, offset, length = entry.get("shape"), entry.get("offset"), entry.get("length")
    if dtype is None or not _is_int_list(shape) or not isinstance(offset, int) or not isinstance(length, int):
        raise LmgolfError(f"{where}: malformed blob entry {entry!r}")
    numel = int(np.prod(shape, dtype=np.int64))
    if offset < 0 or offset + length > len(blobs) or length != numel * torch.empty(0, dtype=dtype).element_size():
        raise LmgolfError(f"{where}: blob {entry.get('role')!r} lies outside the payload or has the wrong length")
    shuffle = entry.get("shuffle", 1)
    if not isinstance(shuffle, int) or shuffle < 1:
        raise LmgolfError(f"{where}: blob {entry.get('role')!r} has a malformed shuffle width {shuffle!r}")
    if numel == 0:  # e.g. the skip weights of a one-layer U-Net; an empty buffer cannot be viewed as a dtype
        return torch.empty(shape, dtype=dtype)
    raw = bytes(blobs[offset:offset + length])
    if shuffle > 1:
        raw = unshuffle_bytes(raw, shuffle)
    return torch.from_numpy(np.frombuffer(raw, dtype=np.uint8).copy()).view(dtype).reshape(shape)


def _read_tensor(entry: dict, blobs: memoryview, source: str) -> tuple[str, torch.Tensor]:
    if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
        raise LmgolfError(f"{source}: malformed tensor entry in the header")
    name, shape, storage = entry["name"], entry.get("shape"), entry.get("storage")
    where = f"{source}: tensor {name}"
    if storage not in STORAGES:
        raise LmgolfError(f"{where}: unknown storage {storage!r} (this lmgolf knows {', '.join(STORAGES)})")
    meta = entry.get("meta", {})
    if not _is_int_list(shape) or not isinstance(entry.get("blobs"), list) or not isinstance(meta, dict):
        raise LmgolfError(f"{where}: malformed tensor entry")
    parts = {b.get("role"): _read_blob(b, blobs, where) for b in entry["blobs"] if isinstance(b, dict)}
    try:
        tensor = STORAGES[storage].dequantize(parts, meta, shape)
        if "lowrank_a" in parts:  # a low-rank correction of the quantization error: rows += A @ B
            a, b = parts["lowrank_a"].float(), parts["lowrank_b"].float()
            tensor = tensor.reshape(a.shape[0], -1) + a @ b
        tensor = tensor.reshape(shape)
    except (KeyError, RuntimeError, ValueError, TypeError, IndexError) as e:
        raise LmgolfError(f"{where}: blobs do not fit storage {storage} ({e.__class__.__name__}: {e})") from None
    return name, tensor


def read_tensors(entries: object, blobs: memoryview, source: str) -> dict[str, torch.Tensor]:
    if not isinstance(entries, list):
        raise LmgolfError(f"{source}: header field 'tensors' missing or not a list")
    return dict(_read_tensor(e, blobs, source) for e in entries)


def _is_int_list(x: object) -> bool:
    return isinstance(x, list) and all(isinstance(i, int) and i >= 0 for i in x)


# ---------------------------------------------------------------------------------------------------
# Pack and load


def tokenizer_header(tokenizer) -> dict:
    files = {name: base64.b64encode(data).decode("ascii") for name, data in tokenizer.files().items()}
    return {"kind": tokenizer.kind, "vocab_size": tokenizer.vocab_size, "fingerprint": tokenizer.fingerprint,
            "files": files}


def policy_header(policy: PackPolicy) -> dict:
    """The policy for the record, without the codec, so that every codec compresses the same payload."""
    return {k: v for k, v in asdict(policy).items() if k != "codec"}


def container(codec_name: str, payload: bytes) -> bytes:
    codec = CODECS[codec_name]
    preamble = MAGIC + bytes([FORMAT_VERSION, codec.id]) + hashlib.sha256(payload).digest()
    return preamble + codec.compress(payload)


def _expected_shapes(header: dict, source: str) -> dict[str, list[int]]:
    """The state-dict shapes of the header's config, from a model on the meta device (nothing allocated;
    the config's checks bound its size first)."""
    where = f"{source}: header field 'config'"
    try:
        cfg = Config.from_dict(header.get("config"), source=where)
    except LmgolfError as e:  # the cross-field checks name the field, not the file
        raise LmgolfError(str(e) if str(e).startswith(where) else f"{where}: {e}") from None
    with torch.device("meta"):
        return {k: list(v.shape) for k, v in GPT(cfg.model).state_dict().items()}


def _blob_cap(header: dict, source: str) -> int:
    """The size of the blob section the header describes, once its tensors match its config's shapes."""
    entries, shapes = header.get("tensors"), _expected_shapes(header, source)
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("name"), str) for e in entries):
        raise LmgolfError(f"{source}: header field 'tensors' missing or not a list")
    names = [e.get("name") for e in entries]
    for e in entries:
        if shapes.get(e.get("name"), e.get("shape")) != e.get("shape"):
            raise LmgolfError(f"{source}: tensor {e['name']} has shape {e.get('shape')}, its config gives {shapes[e['name']]}")
    if set(names) != set(shapes) or len(names) != len(shapes):
        odd = sorted(set(names) ^ set(shapes)) or ["(a duplicate)"]
        raise LmgolfError(f"{source}: the tensors do not match the config's model ({odd[0]})")
    ends = [b.get("offset", 0) + b.get("length", 0) for e in entries for b in e.get("blobs") or [] if isinstance(b, dict)
            and isinstance(b.get("offset", 0), int) and isinstance(b.get("length", 0), int)]
    cap, params = max(ends, default=0), sum(int(np.prod(v, dtype=np.int64)) for v in shapes.values())
    if cap > 8 * params + (1 << 20):
        raise LmgolfError(f"{source}: the header lists {cap:,} bytes of blobs for {params:,} parameters")
    return cap


def _read(path: Path) -> tuple[dict, memoryview, str, bytes]:
    """(header, blob section, codec name, sha256 of the payload), decompressed a bounded piece at a time:
    the header first (at most MAX_HEADER bytes), then exactly the blob section its checked tensors describe."""
    if not path.is_file():
        raise LmgolfError(f"{path}: no such artifact")
    data = path.read_bytes()
    if len(data) < PREAMBLE or not data.startswith(MAGIC):
        raise LmgolfError(f"{path}: not an lmgolf artifact (bad magic)")
    version, codec_id = data[len(MAGIC)], data[len(MAGIC) + 1]
    if version != FORMAT_VERSION:
        raise LmgolfError(f"{path}: artifact format version {version}, this lmgolf reads version {FORMAT_VERSION}")
    found = codec_by_id(codec_id)
    missing = next((name for name, i in OPTIONAL_CODECS.items() if i == codec_id), None)
    if found is None and missing:
        raise LmgolfError(f"{path}: {missing_codec_message(missing)}")
    if found is None:
        raise LmgolfError(f"{path}: unknown codec id {codec_id}")
    name, codec = found
    expected = data[len(MAGIC) + 2:PREAMBLE]
    try:
        reader = codec.reader(data[PREAMBLE:])
        head = reader.read(4)
        n = struct.unpack("<I", head)[0] if len(head) == 4 else 0
        if n > MAX_HEADER:
            raise LmgolfError(f"{path}: header length {n:,} bytes, over the limit of {MAX_HEADER:,}")
        head += reader.read(n)
        header, _ = split_payload(bytes(head), str(path))
        blobs = reader.read(_blob_cap(header, str(path)))
        if reader.read(1):
            raise LmgolfError(f"{path}: corrupt payload, more data follows the blobs its header lists")
    except ValueError as e:
        raise LmgolfError(f"{path}: corrupt {name} payload ({e})") from None
    digest = hashlib.sha256(head)
    digest.update(blobs)
    if digest.digest() != expected:
        raise LmgolfError(f"{path}: checksum mismatch, the artifact is corrupt")
    return header, memoryview(blobs), name, bytes(head)


def read_payload(path: Path) -> tuple[bytes, str]:
    """The verified uncompressed payload and the codec name."""
    _, blobs, name, head = _read(Path(path))
    return head + blobs, name


def read_header(path: str | Path) -> dict:
    """The artifact's JSON header (config, tokenizer, tensor index), plus `codec` and `artifact_bytes`."""
    path = Path(path)
    header, _, codec, _ = _read(path)
    return {**header, "codec": codec, "artifact_bytes": path.stat().st_size}


def _load_tokenizer(info: object, path: Path):
    from lmgolf.data.tokenizers import tokenizer_from_files
    if not isinstance(info, dict) or not isinstance(info.get("files"), dict):
        raise LmgolfError(f"{path}: header field 'tokenizer' missing or malformed")
    try:
        files = {name: base64.b64decode(text, validate=True) for name, text in info["files"].items()}
    except (TypeError, ValueError):
        raise LmgolfError(f"{path}: header field 'tokenizer.files' is not valid base64") from None
    tokenizer = tokenizer_from_files(files, f"{path}: tokenizer")
    if tokenizer.fingerprint != info.get("fingerprint"):
        raise LmgolfError(f"{path}: the stored tokenizer does not match its fingerprint")
    return tokenizer


def load_artifact(path: str | Path, device: str | torch.device = "cpu"):
    """(model in eval mode with the dequantized weights, config, tokenizer, header info)."""
    path = Path(path)
    header, blobs, codec, _ = _read(path)
    cfg = Config.from_dict(header.get("config"), source=f"{path}: header field 'config'")
    tokenizer = _load_tokenizer(header.get("tokenizer"), path)
    weights = read_tensors(header.get("tensors"), blobs, str(path))
    model = GPT(cfg.model)
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise LmgolfError(f"{path}: weights do not fit the config ({str(e).splitlines()[0]})") from None
    info = {k: v for k, v in header.items() if k not in ("config", "tokenizer", "tensors")}
    info.update(codec=codec, artifact_bytes=path.stat().st_size,
                storages={e["name"]: e["storage"] for e in header["tensors"]},
                tokenizer={k: v for k, v in header["tokenizer"].items() if k != "files"})
    return model.to(device).eval(), cfg, tokenizer, info
