"""Data folders: a corpus tokenized into shards, with its tokenizer and a meta.json (layout in docs/data.md).

    out/tokenizer/      the tokenizer (Tokenizer.save)
    out/train.bin       train token ids, every document written as [bos] + ids(document)
    out/val.bin         val token ids, same layout
    out/val_bytes.bin   bytes each val token stands for (0 for BOS); sums to the val text's byte count
    out/test.bin        only for corpora with an official test split (PTB, WikiText-2): as val.bin
    out/test_bytes.bin  and as val_bytes.bin, for the test text
    out/meta.json       what was made from what, and the counts

Everything is written into a temp folder beside `out` and renamed at the end, so a failure leaves nothing behind.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from lmgolf.version import __version__
from lmgolf.data.meta import DATA_FORMAT, DATA_FORMAT_VERSION
from lmgolf.data.corpora import DATA_DIR_ENV, Corpus, load_corpus
from lmgolf.errors import LmgolfError
from lmgolf.progress import progress_bar
from lmgolf.runfiles import atomic_write_text, remove_stale_temps, sha256_file, temp_prefix, use_default_permissions
from lmgolf.data.shards import ShardWriter, dtype_for_vocab, read_pg_shard, write_shard

UTF8_RULE = "utf-8"
PG_RULE = "parameter-golf piece table"
TRAINED_KINDS = ("bpe", "unigram", "char", "word")


# ---------------------------------------------------------------- the output folder


def is_data_folder(path: Path) -> bool:
    try:
        return json.loads((path / "meta.json").read_text())["format"] == DATA_FORMAT
    except (OSError, ValueError, KeyError, TypeError):
        return False


def check_output(out: Path, overwrite: bool) -> None:
    """Refuse a non-empty `out` unless overwrite is set and it is an earlier lmgolf data folder."""
    if not out.exists():
        return
    if not out.is_dir():
        raise LmgolfError(f"{out}: exists and is not a folder")
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise LmgolfError(f"{out}: already exists and is not empty; pass --overwrite to replace it")
    if not is_data_folder(out):
        raise LmgolfError(f"{out}: not an lmgolf data folder (no valid meta.json); refusing to replace it")


@contextmanager
def staging_folder(out: Path):
    """A temp folder beside `out`; on success it replaces `out`, on failure it is removed."""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=out.parent, prefix=temp_prefix(out.name), suffix=".tmp"))
    use_default_permissions(staging)
    try:
        yield staging
        replace_folder(staging, out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    remove_stale_temps(out, (".tmp", ".old"))  # what a killed earlier prepare of `out` left beside it


def replace_folder(new: Path, out: Path) -> None:
    """Move `new` to `out`; an existing `out` is moved aside first and deleted only once `new` is in place."""
    if not out.exists():
        os.replace(new, out)
        return
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=temp_prefix(out.name), suffix=".old"))
    os.replace(out, old / "previous")
    try:
        os.replace(new, out)
    except OSError:
        os.replace(old / "previous", out)
        raise
    finally:
        shutil.rmtree(old, ignore_errors=True)


def write_json(path: Path, payload: dict) -> None:
    atomic_write_text(path, json.dumps(payload, indent=2, ensure_ascii=False) + "\n")


# ---------------------------------------------------------------- tokenizing a corpus


def gpt2_files_dir(data_dir: str | Path | None) -> Path | None:
    """The corpus folder's `tokenizers/gpt2/`, when there is one (the tokenizer module has other fallbacks)."""
    root = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    folder = Path(root) / "tokenizers" / "gpt2" if root else None
    return folder if folder is not None and folder.is_dir() else None


def make_tokenizer(kind: str, corpus: Corpus, vocab_size, tokenizer_model, data_dir):
    """The tokenizer for the data folder; trained kinds learn from the train split only."""
    from lmgolf.data.tokenizers import train_tokenizer

    return train_tokenizer(kind, corpus.train, vocab_size=vocab_size, gpt2_dir=gpt2_files_dir(data_dir),
                           model_file=tokenizer_model)


def utf8_size(text: str) -> int:
    return len(text.encode("utf-8"))


def write_train_tokens(path: Path, documents: list[str], tokenizer, progress: bool) -> dict:
    """Streams [bos] + ids(document) for every document into a shard; returns the split's counts."""
    bos = np.array([tokenizer.bos_id], dtype=np.int64)
    total_bytes = sum(utf8_size(document) for document in documents)
    tokens = 0
    bar = progress_bar(total=total_bytes, desc="tokenizing train", unit="B", disable=not progress)
    with bar, ShardWriter(path, tokenizer.fingerprint, "tokens", dtype_for_vocab(tokenizer.vocab_size)) as writer:
        for document in documents:
            ids = np.asarray(tokenizer.encode(document), dtype=np.int64)
            writer.append(bos)
            writer.append(ids)
            tokens += 1 + len(ids)
            bar.update(utf8_size(document))
    return {"documents": len(documents), "tokens": tokens, "bytes": total_bytes}


def encode_val_document(tokenizer, document: str) -> tuple[np.ndarray, np.ndarray]:
    """[bos] + ids and their byte counts (0 for BOS), checked to cover the document's bytes exactly."""
    ids, nbytes = tokenizer.encode_with_bytes(document)
    ids, nbytes = np.asarray(ids, dtype=np.int64), np.asarray(nbytes, dtype=np.int64)
    if len(ids) != len(nbytes) or int(nbytes.sum()) != utf8_size(document):
        raise AssertionError(f"tokenizer {tokenizer.kind}: byte counts sum to {int(nbytes.sum())} for "
                             f"{len(ids)} ids, but the document has {utf8_size(document)} UTF-8 bytes")
    return np.concatenate([[tokenizer.bos_id], ids]), np.concatenate([[0], nbytes])


def encode_val_documents(tokenizer, documents: list[str], progress: bool = False,
                         split: str = "val") -> tuple[np.ndarray, np.ndarray]:
    """The val split's layout of documents: every one [bos] + ids, with its exact byte counts (0 for BOS),
    which sum to the documents' UTF-8 size."""
    total_bytes = sum(utf8_size(document) for document in documents)
    token_parts, byte_parts = [], []
    with progress_bar(total=total_bytes, desc=f"tokenizing {split}", unit="B", disable=not progress) as bar:
        for document in documents:
            ids, nbytes = encode_val_document(tokenizer, document)
            token_parts.append(ids)
            byte_parts.append(nbytes)
            bar.update(utf8_size(document))
    tokens, nbytes = np.concatenate(token_parts), np.concatenate(byte_parts)
    if int(nbytes.sum()) != total_bytes:
        raise AssertionError(f"{split} byte counts sum to {int(nbytes.sum())}, the {split} text has {total_bytes} bytes")
    return tokens, nbytes


def write_val_tokens(folder: Path, documents: list[str], tokenizer, progress: bool, split: str = "val") -> dict:
    """{split}.bin and {split}_bytes.bin (val, or test); returns the split's counts."""
    total_bytes = sum(utf8_size(document) for document in documents)
    tokens, nbytes = encode_val_documents(tokenizer, documents, progress, split)
    write_shard(folder / f"{split}.bin", tokens, tokenizer.fingerprint, "tokens", dtype_for_vocab(tokenizer.vocab_size))
    write_shard(folder / f"{split}_bytes.bin", nbytes, tokenizer.fingerprint, "bytes")
    return {"documents": len(documents), "tokens": len(tokens), "bytes": total_bytes}


def tokenizer_meta(tokenizer) -> dict:
    return {"kind": tokenizer.kind, "vocab_size": int(tokenizer.vocab_size), "bos_id": int(tokenizer.bos_id),
            "fingerprint": tokenizer.fingerprint, "lossy": bool(tokenizer.lossy)}


def build_meta(corpus: dict, tokenizer, bytes_rule: str, counts: dict) -> dict:
    files = {"tokenizer": "tokenizer", "train": "train.bin", "val": "val.bin", "val_bytes": "val_bytes.bin"}
    if "test" in counts:
        files.update(test="test.bin", test_bytes="test_bytes.bin")
    return {
        "format": DATA_FORMAT,
        "format_version": DATA_FORMAT_VERSION,
        "lmgolf_version": __version__,
        "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "corpus": corpus,
        "tokenizer": tokenizer_meta(tokenizer),
        "bytes_rule": bytes_rule,
        "files": files,
        "counts": counts,
    }


def prepare_data(corpus: str, tokenizer: str, out: str | Path, vocab_size: int | None = None, data_dir=None,
                 val_fraction: float = 0.05, seed: int = 0, tokenizer_model=None, progress: bool = True,
                 overwrite: bool = False) -> dict:
    """Load and split a corpus, make the tokenizer, write the data folder `out`; returns its meta."""
    out = Path(out)
    check_output(out, overwrite)
    loaded = load_corpus(corpus, data_dir=data_dir, val_fraction=val_fraction, seed=seed)
    tok = make_tokenizer(tokenizer, loaded, vocab_size, tokenizer_model, data_dir)
    with staging_folder(out) as staging:
        tok.save(staging / "tokenizer")
        counts = {"train": write_train_tokens(staging / "train.bin", loaded.train, tok, progress),
                  "val": write_val_tokens(staging, loaded.val, tok, progress)}
        if loaded.test:
            counts["test"] = write_val_tokens(staging, loaded.test, tok, progress, split="test")
        corpus_meta = {"name": loaded.name, "split": loaded.split, "val_fraction": loaded.val_fraction,
                       "seed": loaded.seed, "sources": loaded.sources}
        meta = build_meta(corpus_meta, tok, UTF8_RULE, counts)
        write_json(staging / "meta.json", meta)
    return meta


# ---------------------------------------------------------------- Parameter Golf shards


def matching_shards(pattern: str) -> list[Path]:
    paths = sorted(Path(path) for path in glob.glob(str(Path(pattern).expanduser())))
    if not paths:
        raise LmgolfError(f"{pattern}: no Parameter Golf shards match")
    return paths


def check_pg_tokens(path: Path, tokens: np.ndarray, tokenizer, first: bool) -> None:
    if len(tokens) and int(tokens.max()) >= tokenizer.vocab_size:
        raise LmgolfError(f"{path}: token id {int(tokens.max())} is outside the model's vocabulary "
                          f"of {tokenizer.vocab_size}")
    # Parameter Golf writes every document as [bos] + ids; shards after the first may start mid-document.
    if first and (len(tokens) == 0 or int(tokens[0]) != tokenizer.bos_id):
        raise LmgolfError(f"{path}: does not start with the model's BOS id {tokenizer.bos_id}; "
                          f"not BOS-delimited Parameter Golf shards for this model")


def pg_byte_counts(tokenizer, tables, tokens: np.ndarray, previous: int | None) -> np.ndarray:
    """Parameter Golf's bytes per token; `previous` is the token before this stretch (None at the start)."""
    from lmgolf.data.tokenizers import count_bytes_pg

    if previous is None:
        return np.asarray(count_bytes_pg(tokens, tables), dtype=np.int64)
    with_previous = np.concatenate([[previous], np.asarray(tokens, dtype=np.int64)])
    return np.asarray(count_bytes_pg(with_previous, tables), dtype=np.int64)[1:]


def copy_pg_train(paths: list[Path], destination: Path, tokenizer, tables) -> dict:
    """Streams the train shards into one lmgolf shard; returns the split's counts."""
    documents = tokens = total_bytes = 0
    previous = None
    with ShardWriter(destination, tokenizer.fingerprint, "tokens", dtype_for_vocab(tokenizer.vocab_size)) as writer:
        for index, path in enumerate(paths):
            shard = read_pg_shard(path)
            check_pg_tokens(path, shard, tokenizer, first=index == 0)
            writer.append(shard)
            documents += int(np.count_nonzero(shard == tokenizer.bos_id))
            tokens += len(shard)
            total_bytes += int(pg_byte_counts(tokenizer, tables, shard, previous).sum())
            previous = int(shard[-1]) if len(shard) else previous
    return {"documents": documents, "tokens": tokens, "bytes": total_bytes}


def copy_pg_val(paths: list[Path], folder: Path, tokenizer, tables) -> dict:
    """val.bin and val_bytes.bin from the val shards; returns the split's counts."""
    parts = []
    for index, path in enumerate(paths):
        shard = read_pg_shard(path)
        check_pg_tokens(path, shard, tokenizer, first=index == 0)
        parts.append(np.asarray(shard, dtype=np.int64))
    tokens = np.concatenate(parts)
    nbytes = pg_byte_counts(tokenizer, tables, tokens, None)
    write_shard(folder / "val.bin", tokens, tokenizer.fingerprint, "tokens", dtype_for_vocab(tokenizer.vocab_size))
    write_shard(folder / "val_bytes.bin", nbytes, tokenizer.fingerprint, "bytes")
    documents = int(np.count_nonzero(tokens == tokenizer.bos_id))
    return {"documents": documents, "tokens": len(tokens), "bytes": int(nbytes.sum())}


def import_pg_shards(train_glob: str, val_glob: str, model_file: str | Path, out: str | Path,
                     overwrite: bool = False) -> dict:
    """A data folder from Parameter Golf `.bin` shards and their SentencePiece model; returns its meta.

    Tokens are copied as they are (already BOS-delimited); val bytes follow Parameter Golf's piece-table rule.
    """
    from lmgolf.data.tokenizers import sentencepiece_token_bytes, train_tokenizer

    out = Path(out)
    check_output(out, overwrite)
    train_paths, val_paths = matching_shards(train_glob), matching_shards(val_glob)
    if not Path(model_file).is_file():
        raise LmgolfError(f"{model_file}: SentencePiece model not found")
    tok = train_tokenizer("sentencepiece", [], model_file=str(model_file))
    tables = sentencepiece_token_bytes(tok)
    with staging_folder(out) as staging:
        tok.save(staging / "tokenizer")
        counts = {"train": copy_pg_train(train_paths, staging / "train.bin", tok, tables),
                  "val": copy_pg_val(val_paths, staging, tok, tables)}
        corpus_meta = {"name": "parameter-golf shards", "split": "as given: train and val shard files",
                       "val_fraction": None, "seed": None,
                       "sources": [shard_source(path) for path in train_paths + val_paths + [Path(model_file)]]}
        meta = build_meta(corpus_meta, tok, PG_RULE, counts)
        write_json(staging / "meta.json", meta)
    return meta


def shard_source(path: Path) -> dict:
    return {"path": str(path), "bytes": path.stat().st_size, "sha256": sha256_file(path)}
