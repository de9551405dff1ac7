"""A data folder's meta.json: its format and the checks every reader runs on it."""

from __future__ import annotations

from pathlib import Path

from lmgolf.errors import LmgolfError
from lmgolf.runfiles import read_json_object

DATA_FORMAT = "lmgolf-data"
DATA_FORMAT_VERSION = 1

REQUIRED_FIELDS = {
    "format": str,
    "format_version": int,
    "corpus": dict,
    "tokenizer": dict,
    "tokenizer.kind": str,
    "tokenizer.vocab_size": int,
    "tokenizer.bos_id": int,
    "tokenizer.fingerprint": str,
    "tokenizer.lossy": bool,
    "counts": dict,
    "counts.train.documents": int,
    "counts.train.tokens": int,
    "counts.train.bytes": int,
    "counts.val.documents": int,
    "counts.val.tokens": int,
    "counts.val.bytes": int,
}

# counts.test: only data folders of corpora with an official test split have it (older folders never do)
OPTIONAL_FIELDS = {
    "counts.test": dict,
    "counts.test.documents": int,
    "counts.test.tokens": int,
    "counts.test.bytes": int,
}


def field_value(meta: dict, dotted: str):
    value = meta
    for key in dotted.split("."):
        if not isinstance(value, dict) or key not in value:
            raise KeyError(dotted)
        value = value[key]
    return value


def check_fields(path: Path, meta: dict, fields: dict) -> None:
    for dotted, kind in fields.items():
        try:
            value = field_value(meta, dotted)
        except KeyError:
            raise LmgolfError(f"{path}: field {dotted}: missing") from None
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise LmgolfError(f"{path}: field {dotted}: expected {kind.__name__}, got {value!r}")


def check_meta(path: Path, meta) -> None:
    if not isinstance(meta, dict):
        raise LmgolfError(f"{path}: not a JSON object")
    check_fields(path, meta, REQUIRED_FIELDS)
    if "test" in meta["counts"]:
        check_fields(path, meta, OPTIONAL_FIELDS)
    if meta["format"] != DATA_FORMAT:
        raise LmgolfError(f"{path}: field format: expected {DATA_FORMAT!r}, got {meta['format']!r}")
    if meta["format_version"] > DATA_FORMAT_VERSION:
        raise LmgolfError(f"{path}: field format_version: {meta['format_version']} is newer than this lmgolf "
                          f"reads ({DATA_FORMAT_VERSION})")
    fingerprint = meta["tokenizer"]["fingerprint"]
    if len(fingerprint) != 64 or any(char not in "0123456789abcdef" for char in fingerprint):
        raise LmgolfError(f"{path}: field tokenizer.fingerprint: expected 64 lowercase hex characters")
    if meta["tokenizer"]["vocab_size"] < 1:
        raise LmgolfError(f"{path}: field tokenizer.vocab_size: must be positive")


def load_meta(data_dir: str | Path) -> dict:
    """A data folder's meta.json, checked."""
    path = Path(data_dir) / "meta.json"
    meta = read_json_object(path, "not an lmgolf data folder (make one with `lmgolf data prepare`)")
    check_meta(path, meta)
    return meta
