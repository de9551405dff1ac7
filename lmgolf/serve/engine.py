"""Decoding many requests at once: one loop that steps every active stream together.

Each engine step gives every active stream one more token: a new stream's first step feeds its whole
prompt (prefill, which also scores every prompt token), later steps feed the one token sampled last, each
stream through its own KV cache (lmgolf.serve.generate's cached decoder, with its window rule). A prefill, and
the rebuild of a cache whose window is full, runs on its own; then the stream's cache joins the decoding batch
(lmgolf.serve.batching: one row per stream, left-padded, each row at its own positions), and every stream in
it gets its next token from one forward pass per step, whatever the lengths of their caches. No request waits
for another to finish: they advance in the same steps, and the step number is recorded in every token event.

A stream ends at max_new_tokens ("length"), when the model samples the document end (BOS) or a stop string
shows up in the text ("stop"; the text is cut before it), at its deadline ("timeout") or when cancelled
(its client went away); its slot and cache are freed at the next step. When the decoding batch's forward pass
raises (say, out of memory), no stream has advanced and the batch's caches may be half-written: its streams drop
them and go on alone next step, each rebuilding its cache from its ids (as at a full window), then rejoin. A pass
of one stream that raises, or a stream whose token handling raises, ends only that stream, with an "error" event.
The bits of a token are what the model paid for it, -log2 p under the model's own distribution (temperature 1,
no top-k/top-p).
"""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from lmgolf.errors import LmgolfError
from lmgolf.serve.batching import DecodeBatch
from lmgolf.serve.generate import Detokenizer, _Cached, _check_args, sample_token

LN2 = math.log(2)


class Busy(LmgolfError):
    """Every stream slot is taken (the server answers 429)."""


@dataclass
class Request:
    prompt_ids: list[int]
    max_new_tokens: int
    temperature: float = 1.0
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    top_logprobs: int = 0  # how many of the most likely alternatives to report at each token
    timeout: float = math.inf  # seconds from submission


@dataclass
class Token:
    """One token of a stream: its id, the text it adds (cut short at a stop string), its bits (None where the
    model saw no token before it), the natural log-probability, the top alternatives and the engine step."""
    id: int
    text: str
    bits: float | None
    top: list[tuple[str, float]] = field(default_factory=list)  # (text, natural log-probability), likeliest first
    step: int = 0

    @property
    def logprob(self) -> float | None:
        return None if self.bits is None else -self.bits * LN2


@dataclass
class Prompt:
    tokens: list[Token]


@dataclass
class Finish:
    reason: str  # length | stop | timeout | error
    message: str = ""


class Stream:
    """One request being decoded; `sink` receives its Prompt, then its Tokens, then one Finish."""

    def __init__(self, request: Request, model, tokenizer, sink: Callable[[object], None]):
        self.request, self.tokenizer, self.sink = request, tokenizer, sink
        self.ids = list(request.prompt_ids)
        self.decoder = _Cached(model, model.cfg.context)
        self.generator = torch.Generator(device=model.tok_emb.weight.device)
        if request.seed is None:
            self.generator.seed()
        else:
            self.generator.manual_seed(request.seed)
        self.detokenizer = Detokenizer(tokenizer, request.prompt_ids[-8:])
        self.pending: list[Token] = []  # tokens whose text may be the start of a stop string
        self.sampled = 0
        self.deadline = time.monotonic() + request.timeout
        self.cancelled = False
        self.finished: str | None = None
        self.steps: list[int] = []  # the engine steps that gave this stream a token

    def cancel(self) -> None:
        self.cancelled = True

    @property
    def prefilled(self) -> bool:
        return self.decoder.cache is not None


def _top(logprobs: torch.Tensor, n: int, tokenizer) -> list[tuple[str, float]]:
    if n <= 0:
        return []
    values, ids = logprobs.topk(min(n, logprobs.numel()))
    return [(tokenizer.decode([int(i)]), float(v)) for v, i in zip(values, ids)]


class Engine:
    """The decoding loop over the active streams, in a background thread (start()) or stepped by hand (step())."""

    def __init__(self, model, tokenizer, max_streams: int = 32):
        self.model, self.tokenizer, self.max_streams = model, tokenizer, max_streams
        self.streams: list[Stream] = []
        self.batch = DecodeBatch(model.tok_emb.weight.device)  # the caches of the streams past their prefill
        self.step_count = 0
        self._lock = threading.Condition()
        self._thread: threading.Thread | None = None
        self._running = False

    # ---------------------------------------------------------------- the outside
    def submit(self, request: Request, sink: Callable[[object], None]) -> Stream:
        _check_args(request.prompt_ids, request.max_new_tokens, request.temperature, request.top_k, request.top_p)
        with self._lock:
            if self._taken() >= self.max_streams:
                raise Busy(f"all {self.max_streams} streams are busy; try again later")
            stream = Stream(request, self.model, self.tokenizer, sink)
            self.streams.append(stream)
            self._lock.notify()
        return stream

    @property
    def active(self) -> int:
        with self._lock:
            return self._taken()

    def _taken(self) -> int:
        """Slots in use: a stream that has finished or was cancelled gives its slot back at once, and its
        cache at the next step (the client may ask again as soon as it has its last event)."""
        return sum(1 for s in self.streams if s.finished is None and not s.cancelled)

    def start(self) -> None:
        self._running = True
        self._thread = threading.Thread(target=self._loop, name="lmgolf-engine", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        with self._lock:
            self._running = False
            self._lock.notify()
        if self._thread is not None:
            self._thread.join()

    def _loop(self) -> None:
        while True:
            with self._lock:
                while self._running and not self.streams:
                    self._lock.wait()
                if not self._running:
                    return
            self.step()

    # ---------------------------------------------------------------- one step
    @torch.no_grad()
    def step(self) -> None:
        """Advances every active stream by one token (a new one: its prompt and first token)."""
        with self._lock:
            streams = list(self.streams)
        self.step_count += 1
        now = time.monotonic()
        live = []
        for s in streams:
            if s.cancelled:
                s.finished = "cancelled"
            elif now > s.deadline:
                self._finish(s, "timeout")
            else:
                live.append(s)
        for group, forward in self._passes(live):
            batched = _decodes(group[0])  # the decoding batch's pass (the others are a prefill or a rebuild each)
            try:
                results = forward()
            except Exception as e:  # one bad request must not stop the others; its client hears why
                if batched:
                    self._alone_next_step(group)
                else:
                    self._finish(group[0], "error", f"{type(e).__name__}: {e}")
                continue
            for s, logits in results:
                try:
                    self._advance(s, logits)
                except Exception as e:
                    self._finish(s, "error", f"{type(e).__name__}: {e}")
        with self._lock:
            done = [s for s in self.streams if s.finished is not None]
            self.streams = [s for s in self.streams if s.finished is None]
        self.batch.update([s for s in self.batch.streams if s.finished is None])  # the finished streams leave the batch
        for s in done:  # free the cache now, not when the last reference to the stream goes
            s.decoder.cache, s.sink = None, None

    def _passes(self, streams: list[Stream]) -> list[tuple[list[Stream], Callable[[], list]]]:
        """This step's forward passes, each with the streams it serves and giving (stream, logits (fed, vocab))
        pairs: one for every stream past its prefill (whatever the length of its cache), then one for each
        prefill or window rebuild (after the batch has let those streams go)."""
        decoding = [s for s in streams if _decodes(s)]
        passes = [([s], lambda s=s: [(s, s.decoder.fed_logits(s.ids))]) for s in streams if not _decodes(s)]
        if decoding:
            passes.insert(0, (decoding, lambda: self._decode(decoding)))
        else:
            self.batch.update([])
        return passes

    def _decode(self, streams: list[Stream]) -> list:
        self.batch.update(streams)
        return list(zip(self.batch.streams, self.batch.forward(self.model)))

    def _alone_next_step(self, streams: list[Stream]) -> None:
        """After a failed batched pass: the batch lets its streams go, and each one's cache is rebuilt from its
        ids by its own pass next step (not _decodes any more), so a stream fails alone or not at all."""
        self.batch.update([])
        for s in streams:
            s.decoder.cache, s.decoder.seen = None, 0

    def _advance(self, s: Stream, logits: torch.Tensor) -> None:
        logprobs = logits.float().log_softmax(-1)
        if s.sampled == 0:
            s.sink(Prompt(self._prompt_tokens(s, logprobs)))
            if s.request.max_new_tokens == 0:
                return self._finish(s, "length")
        r = s.request
        token = sample_token(logits[-1], r.temperature, r.top_k, r.top_p, s.generator)
        s.sampled += 1
        s.steps.append(self.step_count)
        if token == self.tokenizer.bos_id:
            return self._finish(s, "stop")
        s.ids.append(token)
        last = logprobs[-1]
        s.pending.append(Token(token, s.detokenizer.push(token), -float(last[token]) / LN2,
                               _top(last, r.top_logprobs, self.tokenizer), self.step_count))
        if self._emit(s, final=s.sampled >= r.max_new_tokens):
            return self._finish(s, "stop")
        if s.sampled >= r.max_new_tokens:
            self._finish(s, "length")

    def _prompt_tokens(self, s: Stream, logprobs: torch.Tensor) -> list[Token]:
        """Every prompt token with its bits; the first, and any the window cut off, have none."""
        ids, fed = s.request.prompt_ids, logprobs.size(0)
        first_scored = len(ids) - fed + 1
        detokenizer, tokens = Detokenizer(self.tokenizer), []
        for i, token in enumerate(ids):
            bits = -float(logprobs[i - first_scored, token]) / LN2 if i >= first_scored else None
            tokens.append(Token(token, detokenizer.push(token), bits))
        if tokens:
            tokens[-1].text += detokenizer.finish()
        return tokens

    def _emit(self, s: Stream, final: bool) -> bool:
        """Sends the pending tokens that cannot start a stop string (all of them if final); True at a stop."""
        if final:
            s.pending[-1].text += s.detokenizer.finish()
        text = "".join(t.text for t in s.pending)
        cut = min((at for at in (text.find(stop) for stop in s.request.stop if stop) if at >= 0), default=-1)
        if cut >= 0:
            for t in s.pending:
                t.text, cut = t.text[:max(cut, 0)], cut - len(t.text)
                s.sink(t)
            s.pending = []
            return True
        keep = 0 if final else _held(text, s.request.stop)
        while s.pending and len(text) - len(s.pending[0].text) >= keep:
            t = s.pending.pop(0)
            text = text[len(t.text):]
            s.sink(t)
        return False

    def _finish(self, s: Stream, reason: str, message: str = "") -> None:
        if s.pending:
            s.pending[-1].text += s.detokenizer.finish()
        for t in s.pending:
            s.sink(t)
        s.pending = []
        s.finished = reason
        s.sink(Finish(reason, message))


def _held(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of text may be the start of a stop string."""
    return max((n for stop in stops for n in range(min(len(stop) - 1, len(text)), 0, -1)
                if stop.startswith(text[-n:])), default=0)


def _decodes(s: Stream) -> bool:
    """Past its prefill, with room in its window for the token sampled last (which it has not seen yet)."""
    cache = s.decoder.cache
    return cache is not None and cache.length + 1 <= s.decoder.window and s.decoder.seen == len(s.ids) - 1
