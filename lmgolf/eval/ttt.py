"""Score-first test-time training (TTT): the model keeps learning on the validation text it has already scored.

The stream is walked in chunks of `chunk` targets. For each chunk the model FIRST scores the chunk's targets
(no gradients, with the usual sliding-window context from earlier tokens), and only THEN takes `steps`
optimizer steps of next-token loss on those same windows, i.e. on targets it has already been charged for.
So the weights that score target t were trained only on targets before t's chunk: every score still depends
only on earlier tokens. Scores come from `lmgolf.eval.evaluate.window_nats` (the shared log-softmax), each target
once.

What learns: `optimizer="sgd"`: every weight, plain SGD with momentum; `optimizer="lora"`: only low-rank
adapters (rank r, scale alpha / r, B initialised to zero so training starts from the model itself) added
around the Linear layers of every attention and MLP block, SGD with momentum as well. The caller's model is
never touched: TTT works on a deep copy. `reset_docs`: weights and optimizer state go back to their start at
every document start, and chunks never straddle documents. `docs`: document-isolated windows as in
`evaluate(docs=True)`. Deterministic given `seed` (which draws the LoRA A matrices).
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from lmgolf.errors import LmgolfError
from lmgolf.eval.evaluate import (EvalResult, Tally, Window, batches, check_stride, default_batch_size, document_spans,
                             resolve_bos, result_from, span_plan, window_nats)
from lmgolf.model.gpt import MLP, Attention
from lmgolf.progress import progress_bar


@dataclass
class TTTConfig:
    chunk: int | None = None      # targets per chunk; None: the context
    steps: int = 1                # optimizer steps per chunk, taken after scoring it; 0: plain scoring
    lr: float = 1e-3
    momentum: float = 0.9
    optimizer: str = "sgd"        # sgd: all weights | lora: low-rank adapters only
    lora_rank: int = 8
    lora_alpha: float | None = None  # None: the rank (adapter scale 1)
    reset_docs: bool = False      # restore the weights and optimizer state at each document start
    docs: bool = False            # document-isolated windows
    seed: int = 0

    def validate(self) -> None:
        if self.chunk is not None and self.chunk < 1:
            raise LmgolfError(f"ttt chunk: must be >= 1, got {self.chunk}")
        if self.steps < 0:
            raise LmgolfError(f"ttt steps: must be >= 0, got {self.steps}")
        if not (math.isfinite(self.lr) and self.lr >= 0):
            raise LmgolfError(f"ttt lr: must be a finite number >= 0, got {self.lr}")
        if not 0 <= self.momentum < 1:
            raise LmgolfError(f"ttt momentum: must lie in [0, 1), got {self.momentum}")
        if self.optimizer not in ("sgd", "lora"):
            raise LmgolfError(f"ttt optimizer: {self.optimizer!r} is not one of sgd, lora")
        if self.lora_rank < 1:
            raise LmgolfError(f"lora rank: must be >= 1, got {self.lora_rank}")


class LoRALinear(nn.Module):
    """base(x) + (alpha / r) * x A^T B^T: a frozen Linear plus a trainable low-rank update (B starts at 0)."""

    def __init__(self, base: nn.Linear, rank: int, alpha: float, generator: torch.Generator):
        super().__init__()
        self.base, self.scale = base, alpha / rank
        w = base.weight
        a = torch.randn(rank, base.in_features, generator=generator) / math.sqrt(base.in_features)
        self.A = nn.Parameter(a.to(w))
        self.B = nn.Parameter(torch.zeros(base.out_features, rank, dtype=w.dtype, device=w.device))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.base(x) + (x @ self.A.t().to(x.dtype)) @ self.B.t().to(x.dtype) * self.scale


def add_lora(model: nn.Module, rank: int, alpha: float | None = None, seed: int = 0) -> list[nn.Parameter]:
    """Wraps every Linear directly inside an Attention or MLP module (in place) and freezes all other
    weights; returns the adapter parameters."""
    generator = torch.Generator().manual_seed(seed)
    for p in model.parameters():
        p.requires_grad_(False)
    params = []
    for module in list(model.modules()):
        if isinstance(module, (Attention, MLP)):
            for name, child in list(module.named_children()):
                if isinstance(child, nn.Linear):
                    lora = LoRALinear(child, rank, float(alpha or rank), generator)
                    setattr(module, name, lora)
                    params += [lora.A, lora.B]
    return params


def ttt_chunks(tokens: np.ndarray, n: int, context: int, stride: int, cfg: TTTConfig,
               bos_id: int | None) -> list[list[list[Window]]]:
    """Spans (reset units: documents with reset_docs, else the whole stream) -> chunks -> windows. A chunk
    covers `chunk` consecutive targets from its span's start (fewer at the span's end). Where a span ends at a
    document end (a later BOS), its last window does not reach back (full_last off), so no window's inputs
    depend on where the document ends."""
    chunk = cfg.chunk or context
    if cfg.docs or cfg.reset_docs:
        doc_spans = document_spans(tokens, n, bos_id)
        spans = [[(first, last, first - 1 if cfg.docs else 0, False)] for first, last in doc_spans]
    else:
        spans = [[(1, n - 1, 0, True)]] if n > 1 else []
    if not cfg.reset_docs:  # one span: documents in order, no resets
        spans = [[part for span in spans for part in span]] if spans else []
    out = []
    for span in spans:
        chunks = []
        for first, last, floor, full_last in span:
            for lo in range(first, last + 1, chunk):
                chunks.append(span_plan(lo, min(lo + chunk - 1, last), context, stride, floor, full_last))
        out.append(chunks)
    return out


def evaluate_ttt(model, tokens: np.ndarray, nbytes: np.ndarray, context: int, ttt: TTTConfig | None = None,
                 stride: int | None = None, max_tokens: int | None = None, bos_id: int | None = None,
                 batch_size: int | None = None, device: torch.device | str = "cpu", dtype: torch.dtype = torch.float32,
                 progress: bool = True, per_token: bool = False) -> EvalResult:
    """Score-first TTT over targets 1..n-1 (see the module docstring); one process."""
    ttt = ttt or TTTConfig()
    ttt.validate()
    stride = stride or context
    check_stride(stride, context)
    n = len(tokens) if max_tokens is None else min(len(tokens), max_tokens + 1)
    bos = resolve_bos(model, bos_id) if ttt.docs or ttt.reset_docs else None
    spans = ttt_chunks(tokens, n, context, stride, ttt, bos)
    device = torch.device(device)
    work = copy.deepcopy(model).to(device).eval()
    if ttt.optimizer == "lora":
        params = add_lora(work, ttt.lora_rank, ttt.lora_alpha, ttt.seed)
    else:
        params = [p.requires_grad_(True) for p in work.parameters()]
    initial = copy.deepcopy(work.state_dict()) if ttt.reset_docs else None
    max_tokens_per_pass = (batch_size or default_batch_size(context, model.cfg.vocab_size)) * context
    started = time.perf_counter()
    tally = Tally(n, per_token)
    bar = progress_bar(total=max(n - 1, 0), desc="eval ttt", unit="tok", disable=not progress)
    for s, chunks in enumerate(spans):
        if initial is not None and s > 0:
            work.load_state_dict(initial)
        opt = torch.optim.SGD(params, lr=ttt.lr, momentum=ttt.momentum)
        for c, plan in enumerate(chunks):
            with torch.no_grad():  # 1. score the chunk with the weights trained on earlier chunks only
                for windows in batches(plan, max_tokens_per_pass):
                    tally.add(windows, window_nats(work, tokens, windows, device, dtype))
            bar.update(sum(end - first + 1 for _, end, first in plan))
            if c + 1 < len(chunks):  # 2. then learn from it (not after a span's last chunk: nothing left to score)
                for _ in range(ttt.steps):
                    train_step(work, opt, tokens, plan, device, dtype, max_tokens_per_pass)
    bar.close()
    return result_from(tally, nbytes, n, started, context, stride, mode="ttt", docs=ttt.docs, ttt=asdict(ttt))


def train_step(model, opt, tokens, plan: list[Window], device, dtype, max_tokens: int) -> None:
    """One step of mean next-token loss over the scored targets of `plan` (gradients summed over batches)."""
    count = sum(end - first + 1 for _, end, first in plan)
    opt.zero_grad(set_to_none=True)
    with torch.enable_grad():
        for windows in batches(plan, max_tokens):
            loss = torch.cat(window_nats(model, tokens, windows, device, dtype)).sum() / count
            loss.backward()
    opt.step()
