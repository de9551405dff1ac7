"""Curriculum order: training windows from the easiest documents first, widening back to uniform sampling.

The train stream's documents (split at the data folder's BOS, each [bos] + ids) are sorted by a score, easy
(low) first, ties in stream order, and laid out back to back as a virtual stream. At budget fraction p the
windows come from the easiest q(p) of the documents, the first ceil(q * n) of the virtual stream (at least
enough for one window), with q growing linearly from train.curriculum_start_quantile at p = 0 to 1 at
train.curriculum_end. A window may span several consecutive documents of the virtual stream, so it holds only
eligible ones. From q = 1 on, the sampler is the uniform one (lmgolf.data.loader), batch for batch. Scores:
`length` (a document's token count) here; `loss` (a reference model's mean loss) in lmgolf.training.doc_scores.
"""

from __future__ import annotations

import math

import numpy as np

from lmgolf.errors import LmgolfError


def document_bounds(tokens: np.ndarray, bos_id: int) -> tuple[np.ndarray, np.ndarray]:
    """(starts, ends) of the documents of a BOS-delimited stream: each starts at a BOS (or at token 0,
    a stream that starts mid-document) and ends where the next one starts."""
    starts = np.flatnonzero(np.asarray(tokens) == bos_id).astype(np.int64)
    if len(starts) == 0 or starts[0] != 0:
        starts = np.concatenate([[0], starts])
    ends = np.append(starts[1:], len(tokens)).astype(np.int64)
    return starts, ends


def length_scores(tokens: np.ndarray, bos_id: int) -> np.ndarray:
    """curriculum=length: shorter documents are easier."""
    starts, ends = document_bounds(tokens, bos_id)
    return (ends - starts).astype(np.float64)


class DocumentOrder:
    """Which windows a curriculum step may draw, as a function of the budget fraction."""

    def __init__(self, tokens: np.ndarray, bos_id: int, scores: np.ndarray, start_quantile: float, end: float):
        starts, ends = document_bounds(tokens, bos_id)
        if len(scores) != len(starts):
            raise LmgolfError(f"curriculum: {len(scores)} document scores for {len(starts)} documents")
        if not np.all(np.isfinite(scores)):
            raise LmgolfError("curriculum: a document score is not a finite number")
        order = np.argsort(np.asarray(scores, dtype=np.float64), kind="stable")
        self.doc_start = starts[order]
        lengths = (ends - starts)[order]
        self.virtual_end = np.cumsum(lengths)
        self.virtual_start = self.virtual_end - lengths
        self.start_quantile, self.end = start_quantile, end

    @property
    def documents(self) -> int:
        return len(self.doc_start)

    def quantile(self, fraction: float) -> float:
        """q(p): the share of the documents, easiest first, that windows come from at budget fraction p."""
        if fraction >= self.end:
            return 1.0
        return self.start_quantile + (1 - self.start_quantile) * fraction / self.end

    def eligible_tokens(self, fraction: float, seq_len: int) -> int:
        """The length of the virtual stream's eligible prefix: ceil(q * n) documents, at least one window's worth."""
        k = max(1, math.ceil(self.quantile(fraction) * self.documents - 1e-9))
        need = int(np.searchsorted(self.virtual_end, seq_len + 1)) + 1  # the fewest documents holding a window
        return int(self.virtual_end[min(max(k, need), self.documents) - 1])

    def windows(self, starts: np.ndarray, seq_len: int) -> np.ndarray:
        """Train-stream indices (len(starts), seq_len + 1) of the windows at these virtual-stream starts."""
        positions = starts[:, None] + np.arange(seq_len + 1)
        doc = np.searchsorted(self.virtual_end, positions, side="right")
        return self.doc_start[doc] + (positions - self.virtual_start[doc])
