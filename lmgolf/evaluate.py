"""Validation loss and exact bits per byte.

bpb = (sum of cross-entropy in nats over the scored tokens) / ln 2 / (UTF-8 bytes those tokens cover).
The validation stream starts with a BOS token (0 bytes); every later token is a target scored exactly
once, so the bytes of all scored tokens add up to the UTF-8 bytes of the validation text.

Windows: with stride == context the windows do not overlap; with a smaller stride each window
after the first scores only its last `stride` targets and uses the rest as context. The first
window scores all of its targets.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from lmgolf.device import autocast
from lmgolf.progress import progress_bar


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

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        return (f"val loss {self.loss:.4f} nats/token | {self.bpb:.4f} bits/byte | {self.tokens:,} tokens, "
                f"{self.bytes:,} bytes | context {self.context}, stride {self.stride} | {self.seconds:.1f} s"
                + (f" | mean exit depth {self.avg_depth:.2f}" if self.avg_depth is not None else ""))


def window_plan(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """Windows (start, end, first) over a stream of n_tokens: inputs tokens[start:end] predict targets
    start+1..end, of which targets first..end are scored. Targets 1..n_tokens-1 are each scored once."""
    if not 1 <= stride <= context:
        raise ValueError(f"stride must lie in [1, {context}], got {stride}")
    last = n_tokens - 1
    plan, scored = [], 0
    while scored < last:
        end = min(scored + (context if not plan else stride), last)
        plan.append((max(0, end - context), end, scored + 1))
        scored = end
    return plan


@torch.no_grad()
def evaluate(model, tokens: np.ndarray, nbytes: np.ndarray, context: int, stride: int | None = None,
             max_tokens: int | None = None, batch_size: int | None = None, device: torch.device | str = "cpu",
             dtype: torch.dtype = torch.float32, progress: bool = True, rank: int = 0, world_size: int = 1) -> EvalResult:
    """Under torchrun, each process scores every world_size-th window and the sums are all-reduced."""
    stride = stride or context
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    plan = window_plan(n, context, stride)[rank::world_size]
    vocab = model.cfg.vocab_size
    batch_size = batch_size or max(1, min(64, (1 << 24) // (context * vocab)))
    device = torch.device(device)
    was_training = model.training
    model.eval()
    started = time.perf_counter()
    total_nats, depths = 0.0, []
    total_bytes = int(np.asarray(nbytes[1:n], dtype=np.int64).sum())
    bar = progress_bar(total=sum(end - first + 1 for _, end, first in plan), desc="eval", unit="tok", disable=not progress)
    for i in range(0, len(plan), batch_size):  # every window has min(context, n - 1) inputs
        windows = plan[i:i + batch_size]
        total_nats += _score_windows(model, tokens, windows, device, dtype)
        if getattr(model, "avg_depth", None) is not None:
            depths.append(model.avg_depth)
        bar.update(sum(end - first + 1 for _, end, first in windows))
    bar.close()
    model.train(was_training)
    if world_size > 1:
        summed = torch.tensor([total_nats], dtype=torch.float64, device=device)
        dist.all_reduce(summed)
        total_nats = float(summed.item())
    scored = n - 1
    loss = total_nats / max(scored, 1)
    return EvalResult(tokens=scored, bytes=total_bytes, loss=loss, bpb=total_nats / math.log(2) / max(total_bytes, 1),
                      seconds=time.perf_counter() - started, context=context, stride=stride,
                      avg_depth=sum(depths) / len(depths) if depths else None)


def _score_windows(model, tokens, windows, device, dtype) -> float:
    x = torch.from_numpy(np.stack([np.asarray(tokens[s:e], dtype=np.int64) for s, e, _ in windows])).to(device)
    y = torch.from_numpy(np.stack([np.asarray(tokens[s + 1:e + 1], dtype=np.int64) for s, e, _ in windows])).to(device)
    with autocast(device, dtype):
        logits = model(x)
    nll = F.cross_entropy(logits.float().transpose(1, 2), y, reduction="none")
    keep = torch.zeros_like(nll, dtype=torch.bool)
    for row, (s, _, first) in enumerate(windows):
        keep[row, first - s - 1:] = True
    return float(nll[keep].double().sum())
