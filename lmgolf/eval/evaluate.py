"""Validation loss and exact bits per byte.

bpb = (sum of cross-entropy in nats over the scored tokens) / ln 2 / (UTF-8 bytes those tokens cover).
The validation stream starts with a BOS token (0 bytes); every later token is a target scored exactly
once, so the bytes of all scored tokens add up to the UTF-8 bytes of the validation text.

Windows: with stride == context the windows do not overlap; with a smaller stride each window
after the first scores only its last `stride` targets and uses the rest as context. The first
window scores all of its targets.

Modes (lmgolf/ttt.py adds test-time training). All of them are legal: a target's score depends only
on the model, the training split and the tokens before it, every target 1..n-1 is scored exactly
once, and every score is -log p from `log_probs`, a normalized distribution over the whole vocabulary.
- window: the sliding windows above.
- docs (`docs=True`): no context crosses a document boundary. Document i runs from its BOS at a_i to
  the next BOS at a_(i+1), which is its last target ("end of document", 0 bytes) and is predicted from
  document i's own tokens; inputs never reach before a_i. Windows of all documents are batched by length.
- temperature (`fit_temperature`, then `temperature=T`): log_softmax(logits / T) with one scalar T
  fitted on training tokens only.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
import torch.distributed as dist

from lmgolf.device import autocast
from lmgolf.errors import LmgolfError
from lmgolf.progress import progress_bar

Window = tuple[int, int, int]  # (start, end, first): inputs tokens[start:end], targets first..end scored


@dataclass
class EvalResult:
    tokens: int       # scored tokens
    bytes: int        # UTF-8 bytes they cover
    loss: float       # mean nats per scored token
    bpb: float
    seconds: float
    context: int
    stride: int
    avg_depth: float | None = None  # early-exit models: mean depth the evaluated positions used
    mode: str = "window"            # window | docs | temperature | ttt
    docs: bool = False              # every document scored on its own
    temperature: float | None = None
    ttt: dict | None = None         # the test-time training settings
    split: str = "val"              # the data folder's split scored: val | test
    word_ppl: float | None = None   # word tokenizers: exp(nats / words), see word_perplexity
    nats: np.ndarray | None = field(default=None, repr=False)    # per_token: nats of targets 1..n-1
    counts: np.ndarray | None = field(default=None, repr=False)  # per_token: times each target was scored

    def as_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items()
                if k not in ("nats", "counts") and not (k == "word_ppl" and v is None)}

    def format(self) -> str:
        extra = "" if self.mode == "window" else f" | mode {self.mode}"
        extra += " (documents)" if self.docs and self.mode != "docs" else ""
        extra += f" | temperature {self.temperature:.4f}" if self.temperature is not None else ""
        if self.ttt:
            t = self.ttt
            extra += f" | {t['optimizer']} lr {t['lr']:g}, {t['steps']} steps per {t['chunk'] or self.context}-token chunk"
            extra += ", reset at each document" if t["reset_docs"] else ""
        ppl = f" | word perplexity {self.word_ppl:.2f}" if self.word_ppl is not None else ""
        return (f"{self.split} loss {self.loss:.4f} nats/token | {self.bpb:.4f} bits/byte{ppl} | {self.tokens:,} tokens, "
                f"{self.bytes:,} bytes | context {self.context}, stride {self.stride} | {self.seconds:.1f} s"
                + (f" | mean exit depth {self.avg_depth:.2f}" if self.avg_depth is not None else "") + extra)


def scored_words(tokens: np.ndarray, scored: int, bos_id: int) -> int:
    """Words of a word tokenizer among the scored targets 1..scored: every target but a BOS. The <eos>
    token (a newline: PTB's end of sentence) counts as a word, as in the standard PTB perplexity."""
    return int(np.count_nonzero(np.asarray(tokens[1:scored + 1]) != bos_id))


def word_perplexity(total_nats: float, words: int) -> float:
    """exp(total nats / words): word-level perplexity (inf when it overflows a float)."""
    if words < 1:
        raise LmgolfError("word perplexity: no words were scored")
    try:
        return math.exp(total_nats / words)
    except OverflowError:
        return math.inf


def window_plan(n_tokens: int, context: int, stride: int) -> list[Window]:
    """Windows (start, end, first) over a stream of n_tokens: inputs tokens[start:end] predict targets
    start+1..end, of which targets first..end are scored. Targets 1..n_tokens-1 are each scored once."""
    check_stride(stride, context)
    return span_plan(1, n_tokens - 1, context, stride, full_last=True)


def check_stride(stride: int, context: int) -> None:
    if not 1 <= stride <= context:
        raise ValueError(f"stride must lie in [1, {context}], got {stride}")


def default_batch_size(context: int, vocab_size: int) -> int:
    """Windows per forward pass: logits of at most 2^24 floats, and at most 64 windows."""
    return max(1, min(64, (1 << 24) // (context * vocab_size)))


def span_plan(first: int, last: int, context: int, stride: int, floor: int = 0, full_last: bool = False) -> list[Window]:
    """Windows scoring targets first..last once each, in order, with inputs no earlier than `floor`.
    A window scores `stride` new targets (the first one up to floor + context). full_last: the last window
    reaches back to full length; that makes its context depend on where the span ends, so it is used only
    where the end is fixed in advance (the end of the stream), never at a document end (a token value)."""
    plan, scored = [], first - 1
    while scored < last:
        nominal = max(scored + stride, floor + context)
        end = min(nominal, last)
        plan.append((max(floor, (end if full_last else nominal) - context), end, scored + 1))
        scored = end
    return plan


def document_spans(tokens: np.ndarray, n: int, bos_id: int) -> list[tuple[int, int]]:
    """(first target, last target) of each document of tokens[:n]; a document's inputs start at first - 1
    (its BOS, or token 0) and its last target is the next document's BOS (or token n - 1)."""
    starts = np.flatnonzero(np.asarray(tokens[1:n]) == bos_id) + 1
    bounds = [0, *starts.tolist(), n - 1]
    return [(a + 1, b) for a, b in zip(bounds[:-1], bounds[1:]) if b > a]


def document_plan(tokens: np.ndarray, n: int, context: int, stride: int, bos_id: int) -> list[Window]:
    return [w for first, last in document_spans(tokens, n, bos_id)
            for w in span_plan(first, last, context, stride, floor=first - 1)]


def resolve_bos(model, bos_id: int | None) -> int:
    bos_id = bos_id if bos_id is not None else model.cfg.bos_id
    if bos_id is None:
        raise LmgolfError("document scoring needs the BOS id: pass bos_id (the data folder's) or set model.bos_id")
    return int(bos_id)


def log_probs(logits: torch.Tensor, temperature: float | None = None) -> torch.Tensor:
    """The one place where logits become scores: float32 log-softmax over the whole vocabulary (of
    logits / temperature when given), so each row is a distribution summing to 1. Every mode uses it."""
    logits = logits.float()
    return torch.log_softmax(logits / temperature if temperature is not None else logits, dim=-1)


def window_nats(model, tokens: np.ndarray, windows: list[Window], device, dtype,
                temperature: float | None = None, depths: list[float] | None = None) -> list[torch.Tensor]:
    """Nats of targets first..end of each window (a float32 tensor each, with grad when enabled).
    Windows of one length share a forward pass; a window only ever sees tokens[start:end].
    depths: gets the mean depth of each pass that reports one (early-exit models)."""
    out: list[torch.Tensor | None] = [None] * len(windows)
    by_length: dict[int, list[int]] = {}
    for i, (s, e, _) in enumerate(windows):
        by_length.setdefault(e - s, []).append(i)
    for rows in by_length.values():
        ids = torch.from_numpy(np.stack([np.asarray(tokens[windows[i][0]:windows[i][1] + 1], dtype=np.int64) for i in rows]))
        x, y = ids[:, :-1], ids[:, 1:]
        with autocast(device, dtype):
            result = model(x.to(device), aux=depths is not None)
        logits = result.logits if depths is not None else result
        if depths is not None and result.mean_depth is not None:
            depths.append(float(result.mean_depth))
        nats = -log_probs(logits, temperature).gather(-1, y.to(device)[..., None])[..., 0]
        for row, i in enumerate(rows):
            s, _, first = windows[i]
            out[i] = nats[row, first - s - 1:]
    return out


def batches(plan: list[Window], max_tokens: int) -> list[list[Window]]:
    """The plan cut into batches of windows of one length, at most max_tokens inputs each (at least one window)."""
    out, current = [], []
    for w in sorted(plan, key=lambda w: w[0] - w[1]):  # stable: longest first, plan order within a length
        length = w[1] - w[0]
        if current and (length != current[0][1] - current[0][0] or (len(current) + 1) * length > max_tokens):
            out.append(current)
            current = []
        current.append(w)
    return out + [current] if current else out


class Tally:
    """Sums the nats of scored windows; with per_token also each target's nats and how often it was scored."""

    def __init__(self, n: int, per_token: bool):
        self.total = 0.0
        self.nats = np.zeros(max(n - 1, 0)) if per_token else None
        self.counts = np.zeros(max(n - 1, 0), dtype=np.int64) if per_token else None

    def add(self, windows: list[Window], nats: list[torch.Tensor]) -> None:
        if not windows:
            return
        flat = torch.cat([t.detach() for t in nats]).double()
        self.total += float(flat.sum())
        if self.nats is not None:
            flat, offset = flat.cpu().numpy(), 0
            for _, end, first in windows:
                self.nats[first - 1:end] += flat[offset:offset + end - first + 1]
                self.counts[first - 1:end] += 1
                offset += end - first + 1


def result_from(tally: Tally, nbytes: np.ndarray, n: int, started: float, context: int, stride: int, **fields) -> EvalResult:
    scored, total_bytes = max(n - 1, 0), int(np.asarray(nbytes[1:n], dtype=np.int64).sum())
    return EvalResult(tokens=scored, bytes=total_bytes, loss=tally.total / max(scored, 1),
                      bpb=tally.total / math.log(2) / max(total_bytes, 1), seconds=time.perf_counter() - started,
                      context=context, stride=stride, nats=tally.nats, counts=tally.counts, **fields)


@torch.no_grad()
def evaluate(model, tokens: np.ndarray, nbytes: np.ndarray, context: int, stride: int | None = None,
             max_tokens: int | None = None, batch_size: int | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, progress: bool = True, rank: int = 0, world_size: int = 1,
             docs: bool = False, bos_id: int | None = None, temperature: float | None = None,
             per_token: bool = False) -> EvalResult:
    """Scores targets 1..n-1 with sliding windows (docs: inside each document; temperature: logits / T).
    per_token: the result carries each target's nats and score count (this process's windows only).
    Under torchrun, each process scores every world_size-th window and the sums are all-reduced."""
    stride = stride or context
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    largest = int(np.max(tokens[:n])) if n else 0
    if largest >= model.cfg.vocab_size:  # an embedding lookup would fail with a bare IndexError
        raise LmgolfError(f"validation tokens: id {largest} is outside the model's vocabulary of {model.cfg.vocab_size}")
    if docs:
        check_stride(stride, context)
        plan = document_plan(tokens, n, context, stride, resolve_bos(model, bos_id))
    else:
        plan = window_plan(n, context, stride)
    batch_size = batch_size or default_batch_size(context, model.cfg.vocab_size)
    work = batches(plan[rank::world_size], batch_size * min(context, max(n - 1, 1)))
    device = torch.device(device)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    tally, depths = Tally(n, per_token), []
    bar = progress_bar(total=sum(end - first + 1 for b in work for _, end, first in b), desc="eval", unit="tok",
                       disable=not progress)
    for windows in work:
        tally.add(windows, window_nats(model, tokens, windows, device, dtype, temperature, depths))
        bar.update(sum(end - first + 1 for _, end, first in windows))
    bar.close()
    model.train(was_training)
    if world_size > 1:
        summed = torch.tensor([tally.total], dtype=torch.float64, device=device)
        dist.all_reduce(summed)
        tally.total = float(summed.item())
    mode = "temperature" if temperature is not None else "docs" if docs else "window"
    return result_from(tally, nbytes, n, started, context, stride, mode=mode, docs=docs, temperature=temperature,
                       avg_depth=sum(depths) / len(depths) if depths else None)


def best_temperature(logits: torch.Tensor, targets: torch.Tensor, low: float = 0.05, high: float = 20.0,
                     iters: int = 60) -> float:
    """The T in [low, high] minimizing the mean NLL of targets under log_softmax(logits / T): a
    golden-section search over log(1/T) (the NLL is convex in 1/T, so it has one minimum)."""
    def nll(log_beta: float) -> float:
        return float(-log_probs(logits, math.exp(-log_beta)).gather(-1, targets[..., None]).mean())
    a, b = -math.log(high), -math.log(low)
    g = (math.sqrt(5) - 1) / 2
    c, d = b - g * (b - a), a + g * (b - a)
    fc, fd = nll(c), nll(d)
    for _ in range(iters):
        if fc < fd:
            b, d, fd = d, c, fc
            c = b - g * (b - a)
            fc = nll(c)
        else:
            a, c, fc = c, d, fd
            d = a + g * (b - a)
            fd = nll(d)
    return math.exp(-(a + b) / 2)


@torch.no_grad()
def fit_temperature(model, train_tokens: np.ndarray, context: int, fit_tokens: int = 16384, seed: int = 0,
                    device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32) -> float:
    """One temperature for the whole model, fitted on random full windows of the TRAINING split only
    (never the validation text), so scoring val with it stays legal. Logits kept: at most 2^26 floats."""
    fit_tokens = min(fit_tokens, max(context, (1 << 26) // model.cfg.vocab_size))
    if len(train_tokens) < context + 1:
        raise LmgolfError(f"temperature: the training split has {len(train_tokens)} tokens, fewer than context + 1")
    starts = np.random.default_rng(seed).integers(0, len(train_tokens) - context, size=max(1, fit_tokens // context))
    device = torch.device(device)
    was_training = model.training
    model.eval()
    ids = torch.from_numpy(np.stack([np.asarray(train_tokens[s:s + context + 1], dtype=np.int64) for s in starts]))
    x, y = ids[:, :-1].to(device), ids[:, 1:].to(device)
    with autocast(device, dtype):
        logits = torch.cat([model(x[i:i + 8]).float() for i in range(0, len(x), 8)])
    model.train(was_training)
    return best_temperature(logits, y)
