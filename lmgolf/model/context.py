"""The per-forward context and the decoding cache.

A `Context` is made for each forward pass and carries what that pass's modules share: the token ids and
the position of the first one, the document ids and the one attention mask (both built here, only when the
model needs them), the embedding stream x0, the first layer's values, and the auxiliary outputs that
modules report (load-balance losses, expert usage, early-exit states), which the model returns.

A `KVCache` carries state from one call to the next for incremental decoding: a slot per stateful module
application that only that module reads and writes (attention keys and values, the SSM state, a
neighbour feature's previous token, ...), and the number of tokens seen. A cache may also hold a batch of
streams that have seen different numbers of tokens (decoding them together, lmgolf.serve.engine): then
`lengths` gives each row's own count, the slots that grow by one entry per token (`time_axes`) are left-padded
to `length` (so new entries land at the end of every row), and the context gives each row its own positions
and masks the padding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ContextSpec:
    """What a model needs its contexts to build, fixed when the model is built."""
    bos_id: int | None = None
    doc_mask: bool = False   # attention and SSM state stop at a BOS
    documents: bool = False  # the document index of each position (doc_mask, window models)
    attention: bool = False  # the model attends: build a mask where plain causal attention does not do


class KVCache:
    """Decoding state between forward calls: `length` tokens seen, and `slots`, keyed by (module, how many
    times that module had already run in the pass): depth recurrence runs a block more than once."""

    def __init__(self):
        self.length = 0
        self.slots: dict[tuple[object, int], object] = {}
        self.time_axes: dict[tuple[object, int], int] = {}  # slot -> the axis its tensors grow along, one entry a token
        self.lengths: torch.Tensor | None = None  # (batch,): each row's own tokens seen, left-padded to `length`


def attention_mask(n_queries: int, start: int, device, docs: torch.Tensor | None = None,
                   key_docs: torch.Tensor | None = None, key_lengths: torch.Tensor | None = None) -> torch.Tensor:
    """The allowed (query, key) pairs, (batch or 1, 1, queries, keys): queries sit at positions
    start..start+n_queries-1 and see every key that is not later (and, with document ids, in the same document).
    With `key_lengths` (batch,), row b's cached keys are the last key_lengths[b] before `start`; those before
    them are padding, seen by no query."""
    q_pos = torch.arange(start, start + n_queries, device=device)
    k_pos = torch.arange(start + n_queries, device=device)
    allowed = (k_pos[None, :] <= q_pos[:, None])[None, None]
    if docs is not None:
        allowed = allowed & (docs[:, None, :, None] == key_docs[:, None, None, :])
    if key_lengths is not None:
        allowed = allowed & (k_pos[None, :] >= start - key_lengths[:, None])[:, None, None, :]
    return allowed


class Context:
    def __init__(self, idx: torch.Tensor | None = None, cache: KVCache | None = None, spec: ContextSpec = ContextSpec()):
        self.idx, self.cache = idx, cache
        self.start = cache.length if cache is not None else 0
        lengths = cache.lengths if cache is not None else None
        self.positions = None  # (batch, T): each row's own positions, only for a cache of rows with their own lengths
        if lengths is not None:
            self.positions = lengths[:, None] + torch.arange(idx.size(1), device=idx.device)
        self._visits: dict[object, int] = {}
        key_docs = None
        self.docs = None  # (batch, T): the document index of each new position
        if spec.documents:
            self.docs, key_docs = self._documents(spec)
        self.mask = None  # None: plain causal attention (the fused kernel's is_causal)
        if spec.attention and (spec.doc_mask or self.start > 0):
            self.mask = attention_mask(idx.size(1), self.start, idx.device, self.docs if spec.doc_mask else None, key_docs,
                                       lengths)
        self.x0: torch.Tensor | None = None       # the embedding stream (resid_mix)
        self.v_first: torch.Tensor | None = None  # the first attention layer's values (value residuals)
        self.skips: list[torch.Tensor] = []        # U-Net skips pushed by the first half of the depth
        self.exit_states: list[torch.Tensor] = []  # the residual stream at each early-exit depth
        self.balance_losses: list[torch.Tensor] = []  # each MoE application's load-balance loss
        self.expert_usage: list[torch.Tensor] = []    # each MoE application's share of routed slots per expert

    def _documents(self, spec: ContextSpec) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Document ids of the new positions and of every key (a BOS token opens a new document); all 0
        when the BOS id is unknown, which only models without document masking accept."""
        if spec.bos_id is None:
            if spec.doc_mask:
                raise ValueError("model.doc_mask needs model.bos_id (training sets it from the data folder)")
            return torch.zeros_like(self.idx), None
        docs = torch.cumsum(self.idx == spec.bos_id, dim=1)
        past = self.recall("documents")
        if past is not None:
            docs = docs + past[:, -1:]
        keys = docs if past is None else torch.cat((past, docs), dim=1)
        self.keep("documents", keys, time_axis=1)
        return docs, keys

    def recall(self, owner) -> object:
        """What `owner` kept at the same point of the previous call (None at the first, or without a cache)."""
        if self.cache is None:
            return None
        visit = self._visits[owner] = self._visits.get(owner, -1) + 1
        return self.cache.slots.get((owner, visit))

    def keep(self, owner, state, time_axis: int | None = None) -> None:
        """Stores `owner`'s state for the next call; call after `recall` in the same application. `time_axis`:
        the axis along which the state's tensors hold one entry per token seen (attention's keys and values)."""
        if self.cache is not None:
            key = (owner, self._visits[owner])
            self.cache.slots[key] = state
            if time_axis is not None:
                self.cache.time_axes[key] = time_axis

    def close(self) -> None:
        if self.cache is not None:
            self.cache.length += self.idx.size(1)
            if self.cache.lengths is not None:
                self.cache.lengths = self.cache.lengths + self.idx.size(1)
