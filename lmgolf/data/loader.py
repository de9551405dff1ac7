"""Training batches: random windows of a token stream, a pure function of (seed, step).

Each step draws the global batch of G = micro_batch * accum_steps * world_size window starts from
`np.random.default_rng([seed, step])`. Window j of the global batch belongs to the process and micro-step with
j // micro_batch == micro * world_size + rank, so every process takes a disjoint slice, and the union over ranks
and micro-steps is the same for any split of G into world_size * accum_steps. Nothing is carried between calls,
so resuming at step s sees exactly the data an uninterrupted run would.

A step may use a shorter sequence length than the sampler's (train.context_schedule) and a smaller global batch
(train.batch_schedule); the draw depends only on (seed, step, that length, that batch). With a curriculum
(lmgolf.data.curriculum.DocumentOrder) and a budget fraction before its end, the same draw picks starts in the
order's virtual stream of the easiest documents instead; the ranks' share of it is the same.
"""

from __future__ import annotations

import numpy as np
import torch

from lmgolf.data.curriculum import DocumentOrder
from lmgolf.errors import LmgolfError


class WindowSampler:
    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, rank: int = 0, world_size: int = 1,
                 order: DocumentOrder | None = None):
        """seq_len: the longest length a step may ask for; order: the curriculum's (None: uniform throughout)."""
        if seq_len < 1:
            raise LmgolfError(f"seq_len: must be at least 1, got {seq_len}")
        if not 0 <= rank < world_size:
            raise LmgolfError(f"rank: {rank} is not in [0, {world_size})")
        if len(tokens) < seq_len + 1:
            raise LmgolfError(f"train tokens: {len(tokens)} tokens are too few for windows of {seq_len} + 1")
        self.tokens = tokens
        self.seq_len = seq_len
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.order = order
        self.offsets = np.arange(seq_len + 1)

    def global_starts(self, step: int, global_batch: int, seq_len: int | None = None, fraction: float = 0.0) -> np.ndarray:
        """The whole step's window starts: in the train stream (0 .. len - seq_len - 1, so every window has its
        next-token target), or in the curriculum's virtual stream while `curriculum(fraction)`."""
        seq_len = self._length(seq_len)
        rng = np.random.default_rng([self.seed, step])
        if self.curriculum(fraction):
            return rng.integers(0, self.order.eligible_tokens(fraction, seq_len) - seq_len, size=global_batch)
        return rng.integers(0, len(self.tokens) - seq_len, size=global_batch)

    def curriculum(self, fraction: float) -> bool:
        """Whether the curriculum still narrows the sampling at this budget fraction."""
        return self.order is not None and self.order.quantile(fraction) < 1

    def starts(self, step: int, micro: int, micro_batch: int, accum_steps: int, seq_len: int | None = None,
               fraction: float = 0.0) -> np.ndarray:
        """The window starts this process uses on micro-step `micro` of `step`."""
        if not 0 <= micro < accum_steps:
            raise LmgolfError(f"micro: {micro} is not in [0, {accum_steps})")
        everything = self.global_starts(step, micro_batch * accum_steps * self.world_size, seq_len, fraction)
        slot = micro * self.world_size + self.rank
        return everything[slot * micro_batch:(slot + 1) * micro_batch]

    def indices(self, step: int, micro: int, micro_batch: int, accum_steps: int, seq_len: int | None = None,
                fraction: float = 0.0) -> np.ndarray:
        """Train-stream indices (micro_batch, seq_len + 1) of this process's windows on micro-step `micro`."""
        seq_len = self._length(seq_len)
        starts = self.starts(step, micro, micro_batch, accum_steps, seq_len, fraction)
        if self.curriculum(fraction):
            return self.order.windows(starts, seq_len)
        return starts[:, None] + self.offsets[:seq_len + 1]

    def batch(self, step: int, micro: int, micro_batch: int, accum_steps: int, seq_len: int | None = None,
              fraction: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 tensors of shape (micro_batch, seq_len); y is x shifted left by one token."""
        rows = self.indices(step, micro, micro_batch, accum_steps, seq_len, fraction)
        windows = torch.from_numpy(np.asarray(self.tokens[rows], dtype=np.int64))
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()

    def _length(self, seq_len: int | None) -> int:
        if seq_len is None:
            return self.seq_len
        if not 1 <= seq_len <= self.seq_len:
            raise LmgolfError(f"seq_len: {seq_len} is not in [1, {self.seq_len}] (the sampler's longest)")
        return seq_len
