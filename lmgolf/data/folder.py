"""A prepared data folder (written by `lmgolf data prepare`), opened for training and evaluation.

What it checks before handing anything out (docs/data.md, "What is verified"): the tokenizer files match
meta.json's fingerprint, vocab_size and bos_id; every shard's checksum and fingerprint; every token id is
below the vocabulary size; the token counts match meta.json's, and the val byte counts sum to its val bytes.
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path

import numpy as np

from lmgolf.errors import LmgolfError
from lmgolf.data.meta import load_meta
from lmgolf.data.shards import read_shard
from lmgolf.data.tokenizers import Tokenizer, load_tokenizer


class DataFolder:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.meta = load_meta(self.path)

    @property
    def fingerprint(self) -> str:
        return self.meta["tokenizer"]["fingerprint"]

    @property
    def vocab_size(self) -> int:
        return int(self.meta["tokenizer"]["vocab_size"])

    @property
    def bos_id(self) -> int:
        return int(self.meta["tokenizer"]["bos_id"])

    @cached_property
    def _tokenizer(self) -> Tokenizer:
        folder = self.path / "tokenizer"
        tokenizer = load_tokenizer(folder)
        meta = self.path / "meta.json"
        if tokenizer.fingerprint != self.fingerprint:
            raise LmgolfError(f"{folder}: its files changed after the data was prepared (fingerprint "
                              f"{tokenizer.fingerprint[:12]}…, {meta} and the shards say {self.fingerprint[:12]}…)")
        for field in ("vocab_size", "bos_id"):
            if int(getattr(tokenizer, field)) != self.meta["tokenizer"][field]:
                raise LmgolfError(f"{meta}: field tokenizer.{field}: {self.meta['tokenizer'][field]}, but the "
                                  f"tokenizer in {folder} has {getattr(tokenizer, field)}")
        return tokenizer

    def tokenizer(self) -> Tokenizer:
        """The folder's tokenizer, checked against meta.json (fingerprint, vocab_size, bos_id)."""
        return self._tokenizer

    def _check_count(self, path: Path, split: str, tokens: int) -> None:
        recorded = self.meta["counts"][split]["tokens"]
        if tokens != recorded:
            raise LmgolfError(f"{path}: {tokens} tokens, but {self.path / 'meta.json'} field counts.{split}.tokens "
                              f"says {recorded}")

    @cached_property
    def _train(self) -> np.ndarray:
        path = self.path / "train.bin"
        tokens = read_shard(path, expect_fingerprint=self.fingerprint, expect_kind="tokens", below=self.vocab_size)
        self._check_count(path, "train", len(tokens))
        return tokens

    def train_tokens(self) -> np.ndarray:
        """train.bin as a memmap, its checksum, ids and count checked (the file is read once per process)."""
        return self._train

    def _scored_split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        self.tokenizer()
        tokens_path, bytes_path = self.path / f"{split}.bin", self.path / f"{split}_bytes.bin"
        tokens = read_shard(tokens_path, expect_fingerprint=self.fingerprint, expect_kind="tokens", below=self.vocab_size)
        nbytes = read_shard(bytes_path, expect_fingerprint=self.fingerprint, expect_kind="bytes")
        if len(tokens) != len(nbytes):
            raise LmgolfError(f"{bytes_path}: {len(nbytes)} byte counts for {len(tokens)} tokens")
        self._check_count(tokens_path, split, len(tokens))
        total, recorded = int(np.sum(nbytes, dtype=np.int64)), self.meta["counts"][split]["bytes"]
        if total != recorded:
            raise LmgolfError(f"{bytes_path}: byte counts sum to {total}, but {self.path / 'meta.json'} field "
                              f"counts.{split}.bytes says {recorded}")
        return tokens, nbytes

    @cached_property
    def _val(self) -> tuple[np.ndarray, np.ndarray]:
        return self._scored_split("val")

    @cached_property
    def _test(self) -> tuple[np.ndarray, np.ndarray]:
        return self._scored_split("test")

    def val_tokens_and_bytes(self) -> tuple[np.ndarray, np.ndarray]:
        """val.bin and val_bytes.bin, checked: checksums, ids, counts, and the bytes summing to meta.json's."""
        return self._val

    @property
    def splits(self) -> tuple[str, ...]:
        """The splits that can be scored: val, and test where meta.json records one (counts.test)."""
        return ("val", "test") if "test" in self.meta["counts"] else ("val",)

    def split_tokens_and_bytes(self, split: str = "val") -> tuple[np.ndarray, np.ndarray]:
        """The tokens and byte counts of a scored split (val or test), checked as val's are."""
        if split not in ("val", "test"):
            raise LmgolfError(f"split: {split!r} is not one of val, test")
        if split not in self.splits:
            raise LmgolfError(f"{self.path}: has no test split (only corpora with an official test file, "
                              f"ptb and wikitext-2, get one from `lmgolf data prepare`)")
        return self._val if split == "val" else self._test

    def check(self) -> None:
        """Everything training reads, checked up front (before a run folder is written)."""
        self.tokenizer()
        self.train_tokens()
        self.val_tokens_and_bytes()

    def describe(self) -> dict:
        """What a run folder records about its data."""
        return {"path": str(self.path.resolve()), "corpus": self.meta.get("corpus"),
                "tokenizer": self.meta["tokenizer"], "counts": self.meta.get("counts")}
