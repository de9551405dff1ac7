"""Sampling from a model: greedy, temperature, top-k and top-p, with or without a KV cache.

The model never sees more than `cfg.context` tokens, the length it was trained on (a learned
position table has no rows beyond it):
  - without the cache, every step runs the last `context` tokens;
  - with the cache, once it holds `context` tokens it is rebuilt from the last `context // 2`
    tokens (one forward pass), so decoding goes on at half a window of history and refills.
Within the context both modes compute the same logits; past it they differ, by design.
"""

from __future__ import annotations

import math
from typing import Iterator

import torch

from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT, KVCache

MAX_NEW_TOKENS = 16_384  # the most tokens one call samples

def _check_args(prompt_ids: list[int], max_new_tokens: int, temperature: float, top_k: int | None,
                top_p: float | None) -> None:
    if len(prompt_ids) == 0:
        raise LmgolfError("prompt_ids: need at least one token (start with the tokenizer's bos_id)")
    if not 0 <= max_new_tokens <= MAX_NEW_TOKENS:
        raise LmgolfError(f"max_new_tokens: must lie in [0, {MAX_NEW_TOKENS}], got {max_new_tokens}")
    if not 0 <= temperature < math.inf:
        raise LmgolfError(f"temperature: must be finite and >= 0 (0 means greedy), got {temperature}")
    if top_k is not None and top_k < 1:
        raise LmgolfError("top_k: must be >= 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise LmgolfError("top_p: must lie in (0, 1]")


class _FullContext:
    """Next-token logits by a full forward pass over the last `window` tokens."""

    def __init__(self, model: GPT, window: int):
        self.model, self.window = model, window

    def logits(self, ids: list[int]) -> torch.Tensor:
        x = torch.tensor([ids[-self.window:]], device=_device(self.model))
        return self.model(x)[0, -1]


class _Cached:
    """Next-token logits feeding only the tokens the cache has not seen; rebuilt when the window is full."""

    def __init__(self, model: GPT, window: int):
        self.model, self.window = model, window
        self.cache: KVCache | None = None
        self.seen = 0  # tokens of `ids` accounted for by the cache

    def logits(self, ids: list[int]) -> torch.Tensor:
        return self.fed_logits(ids)[-1]

    def fed_logits(self, ids: list[int]) -> torch.Tensor:
        """The logits (fed, vocab) at every position fed this call: the tokens the cache had not seen, or,
        when it was (re)built, the last tokens it keeps (row i predicts the token after ids[-fed + i])."""
        new = ids[self.seen:]
        if self.cache is None or self.cache.length + len(new) > self.window:
            keep = self.window if self.cache is None else max(1, self.window // 2)
            self.cache, new = KVCache(), ids[-keep:]
        x = torch.tensor([new], device=_device(self.model))
        out = self.model(x, self.cache)[0]
        self.seen = len(ids)
        return out


def _device(model: GPT) -> torch.device:
    return model.tok_emb.weight.device


def filter_logits(logits: torch.Tensor, top_k: int | None, top_p: float | None) -> torch.Tensor:
    """Top-k, then top-p (the smallest set of most likely tokens whose probability reaches p,
    never empty); the rest get -inf."""
    if top_k is not None and top_k < logits.numel():
        kept = logits.topk(top_k).indices
        logits = torch.full_like(logits, float("-inf")).index_copy(0, kept, logits[kept])
    if top_p is not None and top_p < 1:
        order = logits.argsort(descending=True, stable=True)
        probs = logits[order].softmax(-1)
        before = probs.cumsum(-1) - probs  # probability mass of the more likely tokens
        drop = order[before >= top_p]  # the first token has before == 0 < top_p, so it is always kept
        logits = logits.index_fill(0, drop, float("-inf"))
    return logits


def sample_token(logits: torch.Tensor, temperature: float, top_k: int | None, top_p: float | None,
                 generator: torch.Generator) -> int:
    if temperature == 0:
        return int(logits.argmax())
    logits = filter_logits(logits.float() / temperature, top_k, top_p)
    return int(torch.multinomial(logits.softmax(-1), 1, generator=generator))


def stream(model: GPT, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0, top_k: int | None = None,
           top_p: float | None = None, seed: int | None = None, use_cache: bool = True,
           stop_id: int | None = None) -> Iterator[int]:
    """Yields new token ids one at a time; stops after max_new_tokens or when stop_id is sampled
    (stop_id itself is not yielded). Arguments are checked here, before the first token."""
    _check_args(prompt_ids, max_new_tokens, temperature, top_k, top_p)
    generator = torch.Generator(device=_device(model))
    if seed is None:
        generator.seed()
    else:
        generator.manual_seed(seed)
    decoder = (_Cached if use_cache else _FullContext)(model, model.cfg.context)
    return _stream(decoder, list(prompt_ids), max_new_tokens, temperature, top_k, top_p, generator, stop_id)


@torch.no_grad()
def _stream(decoder, ids: list[int], max_new_tokens: int, temperature: float, top_k: int | None,
            top_p: float | None, generator: torch.Generator, stop_id: int | None) -> Iterator[int]:
    for _ in range(max_new_tokens):
        token = sample_token(decoder.logits(ids), temperature, top_k, top_p, generator)
        if token == stop_id:
            return
        ids.append(token)
        yield token


def generate(model: GPT, prompt_ids: list[int], max_new_tokens: int, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = None, use_cache: bool = True,
             stop_id: int | None = None) -> list[int]:
    """The new token ids (the prompt excluded). temperature 0 is greedy; see `stream`."""
    return list(stream(model, prompt_ids, max_new_tokens, temperature, top_k, top_p, seed, use_cache, stop_id))


class Detokenizer:
    """Text of token ids as they come: push(token) returns the text it completes ("" while a UTF-8 character
    is still partial), finish() what is left at the end; the pieces join to tokenizer.decode(all ids). Only a
    short tail is decoded again at each token. `prefix`: ids already shown (the prompt's last few), decoded
    with the new ones so that a tokenizer that drops a leading space at the start of a text keeps it."""

    def __init__(self, tokenizer, prefix: list[int] = ()):
        self.tokenizer = tokenizer
        self.done, self.anchor = list(prefix), 0
        self.shown = tokenizer.decode(self.done) if self.done else ""  # the text of done[anchor:] returned so far

    def push(self, token: int) -> str:
        self.done.append(token)
        text, piece = self.tokenizer.decode(self.done[self.anchor:]), ""
        if text.startswith(self.shown) and not text.endswith("\ufffd"):
            piece, self.shown = text[len(self.shown):], text
            if len(self.done) - self.anchor > 64:  # move the anchor where the tail decodes to the text's own end
                tail = self.tokenizer.decode(self.done[-16:])
                if text.endswith(tail):
                    self.anchor, self.shown = len(self.done) - 16, tail
        return piece

    def finish(self) -> str:
        text = self.tokenizer.decode(self.done[self.anchor:])
        piece = text[len(self.shown):] if text.startswith(self.shown) else ""
        self.shown += piece
        return piece


def text_pieces(tokenizer, ids: Iterator[int]) -> Iterator[str]:
    """The text of a stream of token ids as it comes, each piece once it decodes cleanly (no partial
    UTF-8 character at its end); the pieces join to tokenizer.decode(all ids)."""
    detokenizer = Detokenizer(tokenizer)
    for token in ids:
        piece = detokenizer.push(token)
        if piece:
            yield piece
    piece = detokenizer.finish()
    if piece:
        yield piece
