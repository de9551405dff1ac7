"""A prepared data folder (written by `lmgolf data prepare`), opened for training and evaluation."""

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

    def tokenizer(self) -> Tokenizer:
        return load_tokenizer(self.path / "tokenizer")

    def train_tokens(self) -> np.ndarray:
        return read_shard(self.path / "train.bin", expect_fingerprint=self.fingerprint, expect_kind="tokens")

    @cached_property
    def _val(self) -> tuple[np.ndarray, np.ndarray]:
        tokens = read_shard(self.path / "val.bin", expect_fingerprint=self.fingerprint, expect_kind="tokens")
        nbytes = read_shard(self.path / "val_bytes.bin", expect_fingerprint=self.fingerprint, expect_kind="bytes")
        if len(tokens) != len(nbytes):
            raise LmgolfError(f"{self.path / 'val_bytes.bin'}: {len(nbytes)} byte counts for {len(tokens)} tokens")
        return tokens, nbytes

    def val_tokens_and_bytes(self) -> tuple[np.ndarray, np.ndarray]:
        return self._val

    def describe(self) -> dict:
        """What a run folder records about its data."""
        return {"path": str(self.path.resolve()), "corpus": self.meta.get("corpus"),
                "tokenizer": self.meta["tokenizer"], "counts": self.meta.get("counts")}
