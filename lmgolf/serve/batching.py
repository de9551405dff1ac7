"""The caches of the streams being decoded, kept as one batch from step to step (lmgolf.serve.engine).

Row i of the batch is streams[i]. The slots that grow by one entry a token (attention's keys and values, the
document ids: KVCache.time_axes) are left-padded to the longest row, so a forward pass appends every row's new
entry at the end and the padding stays in front, where the attention mask hides it; `lengths` gives each row
its own count and so its own positions (lmgolf.model.context). Other states (the SSM's, a neighbour feature's
last token) have one row per stream already. The rows are copied only when the batch changes: streams join
after their own prefill (bringing their own caches) and leave when they finish or their window is full.
"""

from __future__ import annotations

import torch

from lmgolf.model.gpt import KVCache


class DecodeBatch:
    def __init__(self, device):
        self.device = device
        self.streams: list = []  # engine Streams: decoder.cache (their own, until they join), decoder.seen, ids
        self.cache: KVCache | None = None

    def update(self, streams: list) -> None:
        """Holds exactly `streams` (the batch's in their order, then the new ones): drops the other rows and
        takes in the new streams' own caches, whose state then lives here (their own caches keep only the count)."""
        wanted, held = {id(s) for s in streams}, {id(s) for s in self.streams}
        kept = [i for i, s in enumerate(self.streams) if id(s) in wanted]
        if len(kept) < len(self.streams):  # first the leaving rows go, so a failed join leaves no stale row
            self.cache = _rows(self.cache, kept) if kept else None
            self.streams = [self.streams[i] for i in kept]
        joining = [s for s in streams if id(s) not in held]
        if joining:
            parts = ([self.cache] if self.cache is not None else []) + [s.decoder.cache for s in joining]
            self.cache = _join(parts, self.device)
            self.streams = self.streams + joining
            for s in joining:
                s.decoder.cache.slots = {}

    def forward(self, model) -> torch.Tensor:
        """The next-token logits of every row, (rows, 1, vocab), feeding each the token it sampled last."""
        x = torch.tensor([[s.ids[-1]] for s in self.streams], device=self.device)
        logits = model(x, self.cache)
        for s in self.streams:
            s.decoder.cache.length += 1
            s.decoder.seen = len(s.ids)
        return logits


def _join(caches: list[KVCache], device) -> KVCache:
    """Caches (of one stream, or batches) as one batch, the slots that grow with time left-padded to the longest."""
    batch = KVCache()
    batch.length, batch.time_axes = max(c.length for c in caches), caches[0].time_axes
    batch.lengths = torch.cat([c.lengths if c.lengths is not None else torch.tensor([c.length], device=device)
                               for c in caches])
    batch.slots = {key: _stack([c.slots[key] for c in caches], batch.time_axes.get(key), batch.length)
                   for key in caches[0].slots}
    return batch


def _rows(batch: KVCache, rows: list[int]) -> KVCache:
    """Some rows of a batch, without the padding that no row of them needs any more."""
    out = KVCache()
    index = torch.tensor(rows, device=batch.lengths.device)
    out.lengths, out.time_axes = batch.lengths[index], batch.time_axes
    out.length = int(out.lengths.max())
    for key, value in batch.slots.items():
        axis = batch.time_axes.get(key)
        out.slots[key] = _map(value, lambda t: _last(t.index_select(0, index), axis, out.length))
    return out


def _last(t: torch.Tensor, axis: int | None, length: int) -> torch.Tensor:
    return t if axis is None else t.narrow(axis, t.size(axis) - length, length)


def _stack(values: list, time_axis: int | None, length: int):
    """States (tensors with the batch first, tuples of them, None) of several caches as one batch; along a time
    axis, each tensor left-padded with zeros to `length` entries (zeros, not garbage: 0 x NaN would leak through
    the mask)."""
    if all(v is None for v in values):
        return None
    if all(isinstance(v, tuple) for v in values):
        return tuple(_stack(list(parts), time_axis, length) for parts in zip(*values))
    if not all(isinstance(v, torch.Tensor) for v in values):
        raise TypeError(f"cannot batch a decoding state of type {type(values[0]).__name__}")
    if time_axis is None or all(v.size(time_axis) == length for v in values):
        return torch.cat(values, dim=0)
    shape = [sum(v.size(0) for v in values)] + list(values[0].shape[1:])
    shape[time_axis] = length
    batch, row = values[0].new_zeros(shape), 0
    for v in values:
        batch[row:row + v.size(0)].narrow(time_axis, length - v.size(time_axis), v.size(time_axis)).copy_(v)
        row += v.size(0)
    return batch


def _map(value, fn):
    """fn applied to every tensor of a state (a tensor, a tuple of states, or None)."""
    if value is None:
        return None
    if isinstance(value, tuple):
        return tuple(_map(part, fn) for part in value)
    return fn(value)
