"""Training batches: random windows of a token stream, a pure function of (seed, step).

Each step draws the global batch of G = micro_batch * accum_steps * world_size window starts from
`np.random.default_rng([seed, step])`. Window j of the global batch belongs to the process and micro-step with
j // micro_batch == micro * world_size + rank, so every process takes a disjoint slice, and the union over ranks
and micro-steps is the same for any split of G into world_size * accum_steps. Nothing is carried between calls,
so resuming at step s sees exactly the data an uninterrupted run would.
"""

from __future__ import annotations

import numpy as np
import torch

from lmgolf.errors import LmgolfError


class WindowSampler:
    def __init__(self, tokens: np.ndarray, seq_len: int, seed: int, rank: int = 0, world_size: int = 1):
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
        self.offsets = np.arange(seq_len + 1)

    @property
    def num_starts(self) -> int:
        """Valid window starts are 0 .. len - seq_len - 1, so every window has its next-token target."""
        return len(self.tokens) - self.seq_len

    def global_starts(self, step: int, global_batch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, step])
        return rng.integers(0, self.num_starts, size=global_batch)

    def starts(self, step: int, micro: int, micro_batch: int, accum_steps: int) -> np.ndarray:
        """The window starts this process uses on micro-step `micro` of `step`."""
        if not 0 <= micro < accum_steps:
            raise LmgolfError(f"micro: {micro} is not in [0, {accum_steps})")
        everything = self.global_starts(step, micro_batch * accum_steps * self.world_size)
        slot = micro * self.world_size + self.rank
        return everything[slot * micro_batch:(slot + 1) * micro_batch]

    def batch(self, step: int, micro: int, micro_batch: int, accum_steps: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(x, y), int64 tensors of shape (micro_batch, seq_len); y is x shifted left by one token."""
        starts = self.starts(step, micro, micro_batch, accum_steps)
        windows = np.asarray(self.tokens[starts[:, None] + self.offsets], dtype=np.int64)
        windows = torch.from_numpy(windows)
        return windows[:, :-1].contiguous(), windows[:, 1:].contiguous()
