"""GPTQ: post-training quantization with second-order error feedback (Frantar et al., 2022). Pure tensor code.

For a linear layer y = x W^T with calibration inputs X (N rows), GPTQ looks for grid values Q that keep
the layer's output close, min_Q ||X W^T - X Q^T||^2. Row by row this is the quadratic form
(w - q) H (w - q)^T with the Hessian H = 2/N X^T X, the same for every row. The Optimal Brain Quantizer
quantizes one weight at a time and moves the not yet quantized weights of its row to absorb the error:
after rounding column i to q_i, with H^-1 the inverse Hessian of the columns still free,
    delta = -(w_i - q_i) / [H^-1]_ii * [H^-1]_(i,:).
GPTQ makes three changes that make this practical for large matrices:
  1. Arbitrary order: all rows quantize their columns in the same order (left to right), so H^-1 is
     shared by all rows and each step updates every row at once.
  2. Lazy batch updates: within a block of B columns the update is applied column by column; the
     columns to the right of the block receive the whole block's accumulated error in one matrix
     product, E @ [H^-1]_(block, rest). This is the same arithmetic in another order.
  3. Cholesky reformulation: the rows of H^-1 that the steps need (H^-1 with the earlier columns
     eliminated) are exactly the rows of the upper Cholesky factor U of H^-1 (H^-1 = U^T U), so one
     Cholesky decomposition replaces the repeated rank-one downdates, which are numerically fragile.
Dampening (lambda = damp x mean diag H added to the diagonal) keeps the inverse well conditioned;
"dead" inputs (H_ii = 0: the input never fired in the calibration data) get H_ii = 1 and weight 0.
act_order processes columns by decreasing H_ii, the inputs with the most energy first, while later
columns can still absorb their error.

The grid (lmgolf.quantize.Grid) is fixed beforehand from the whole matrix (its scales, e.g. from the
clip rule), so GPTQ only chooses the codes: the result is encoded by the storage like any other snap.

Calibration data: windows of training text (`calibration_batches`), or text the model samples itself
from BOS at temperature 1 (`self_generated_batches`), which needs no access to the training data.
"""

from __future__ import annotations

import math
from typing import Iterable

import numpy as np
import torch
from torch import nn

MAX_DAMP_RETRIES = 12  # each retry raises the dampening tenfold; past them the Hessian is taken as the identity


# ---------------------------------------------------------------------------------------------------
# Calibration data and Hessians


def calibration_batches(tokens: np.ndarray, n_tokens: int, context: int, batch: int = 8,
                        seed: int = 0) -> list[torch.Tensor]:
    """ceil(n_tokens / context) windows of `context` consecutive tokens at random starts (reproducible
    with `seed`), as LongTensors [B, context] of at most `batch` windows each. A token array shorter
    than the context gives windows of its whole length."""
    if len(tokens) == 0:
        raise ValueError("no calibration tokens")
    if n_tokens < 1 or context < 1 or batch < 1:
        raise ValueError("n_tokens, context and batch must be >= 1")
    window = min(context, len(tokens))
    rng = np.random.default_rng(seed)
    starts = rng.integers(0, len(tokens) - window + 1, size=math.ceil(n_tokens / context))
    out = []
    for i in range(0, len(starts), batch):
        rows = np.stack([np.asarray(tokens[s:s + window]) for s in starts[i:i + batch]]).astype(np.int64)
        out.append(torch.from_numpy(rows))
    return out


@torch.no_grad()
def self_generated_batches(model: nn.Module, n_tokens: int, context: int, bos_id: int, seed: int = 0,
                           batch: int = 8) -> list[torch.Tensor]:
    """ceil(n_tokens / context) sequences sampled from the model itself, each starting at BOS, at
    temperature 1 with no top-k/top-p (the model's own distribution), `batch` sequences decoded together
    with a KV cache. The context is capped at the model's. Returns CPU LongTensors [B, context],
    reproducible with `seed` on a given device."""
    from lmgolf.model.gpt import KVCache
    if n_tokens < 1 or context < 1 or batch < 1:
        raise ValueError("n_tokens, context and batch must be >= 1")
    context = min(context, model.cfg.context)
    device = next(model.parameters()).device
    generator = torch.Generator(device=device).manual_seed(seed)
    n_seq = math.ceil(n_tokens / context)
    was_training = model.training
    model.eval()
    out = []
    try:
        for first in range(0, n_seq, batch):
            size = min(batch, n_seq - first)
            ids = torch.full((size, 1), bos_id, dtype=torch.long, device=device)
            cache, new, steps = KVCache(), ids, [ids]
            for _ in range(context - 1):
                probs = model(new, cache)[:, -1].float().softmax(-1)
                new = torch.multinomial(probs, 1, generator=generator)
                steps.append(new)
            out.append(torch.cat(steps, dim=1).cpu())
    finally:
        model.train(was_training)
    return out


def collect_hessians(model: nn.Module, batches: Iterable[torch.Tensor],
                     names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """H = 2/N sum_n x_n x_n^T over every input row x_n that each nn.Linear of the model sees while the
    model runs the batches (eval mode, no gradients), keyed by its weight name f"{module}.weight" and
    restricted to `names` if given. A module applied several times per pass (depth recurrence) counts
    every application. Sums accumulate in float64; the result is float32 [in_features, in_features].
    A Linear that saw no input (an expert no token was routed to) is left out: quantize it without GPTQ."""
    wanted = None if names is None else set(names)
    device = next(model.parameters()).device
    sums: dict[str, torch.Tensor] = {}
    counts: dict[str, int] = {}

    def hook(key: str):
        def accumulate(module: nn.Module, inputs: tuple, output: torch.Tensor) -> None:
            x = inputs[0].detach().reshape(-1, module.in_features).double()
            if key not in sums:
                sums[key] = torch.zeros(module.in_features, module.in_features, dtype=torch.float64, device=x.device)
                counts[key] = 0
            sums[key].addmm_(x.T, x)
            counts[key] += x.shape[0]
        return accumulate

    handles = [module.register_forward_hook(hook(f"{name}.weight")) for name, module in model.named_modules()
               if isinstance(module, nn.Linear) and (wanted is None or f"{name}.weight" in wanted)]
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for batch in batches:
                model(batch.to(device))
    finally:
        for handle in handles:
            handle.remove()
        model.train(was_training)
    return {key: (2.0 / counts[key] * total).float() for key, total in sums.items() if counts[key]}


# ---------------------------------------------------------------------------------------------------
# The quantizer


def _inverse_cholesky(h: torch.Tensor, damp: float) -> torch.Tensor:
    """Upper Cholesky factor U of (H + lambda I)^-1 (float64), lambda = damp x mean diag H, raised tenfold
    while H + lambda I or its inverse is not numerically positive definite; the identity (plain rounding,
    no error feedback) if that never succeeds."""
    n = h.shape[0]
    eye = torch.eye(n, dtype=h.dtype, device=h.device)
    lam = damp * float(h.diagonal().mean())
    for _ in range(MAX_DAMP_RETRIES + 1):
        lower, info = torch.linalg.cholesky_ex(h + lam * eye)
        if int(info) == 0:
            upper, info = torch.linalg.cholesky_ex(torch.cholesky_inverse(lower), upper=True)
            if int(info) == 0 and bool(torch.isfinite(upper).all()) and bool((upper.diagonal() > 0).all()):
                return upper
        lam *= 10
    return eye


def gptq_quantize(w: torch.Tensor, hessian: torch.Tensor, grid, block: int = 128, damp: float = 0.01,
                  act_order: bool = False, keep: torch.Tensor | None = None) -> torch.Tensor:
    """GPTQ codes for a weight matrix w (float32 rows view, out_features x in_features) on a fixed grid
    (lmgolf.quantize.Grid), given the layer's input Hessian (in_features x in_features, e.g. from
    collect_hessians). Returns the snapped float32 matrix: every entry is a value that grid.snap produced,
    so grid.encode stores it exactly.

    block: columns per lazy batch update (the result does not depend on it, up to float rounding).
    damp: dampening as a share of the mean Hessian diagonal. act_order: columns by decreasing H_ii.
    keep: optional boolean mask of w's shape (lmgolf.packing.prune); entries it drops become exactly 0 and their
    error is spread over the remaining columns like any rounding error (SparseGPT with a fixed mask)."""
    if w.ndim != 2:
        raise ValueError(f"expected the 2-D rows view, got shape {list(w.shape)}")
    rows, cols = w.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"Hessian of shape {list(hessian.shape)} does not fit {cols} input columns")
    if keep is not None and keep.shape != w.shape:
        raise ValueError(f"keep mask of shape {list(keep.shape)} does not fit the weight {list(w.shape)}")
    if block < 1 or not damp > 0:
        raise ValueError("block must be >= 1 and damp > 0")
    h = hessian.detach().to(device=w.device, dtype=torch.float64).clone()
    if not bool(torch.isfinite(h).all()):
        raise ValueError("the Hessian contains NaN or inf")
    h = (h + h.T) / 2
    W = w.detach().to(torch.float64).clone()
    if keep is not None:
        keep = keep.to(device=w.device, dtype=torch.bool)

    dead = h.diagonal() <= 0  # the input never fired: nothing to preserve, and the weight is free to be 0
    h[dead, dead] = 1.0
    W[:, dead] = 0.0
    if act_order:
        perm = torch.argsort(h.diagonal(), descending=True, stable=True)
        W, h = W[:, perm], h[perm][:, perm]
        if keep is not None:
            keep = keep[:, perm]
    hinv = _inverse_cholesky(h, damp)

    Q = torch.zeros(rows, cols, dtype=torch.float32, device=w.device)
    for i1 in range(0, cols, block):
        i2 = min(i1 + block, cols)
        W1 = W[:, i1:i2].clone()
        E1 = torch.zeros_like(W1)
        H1 = hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            c = i1 + i
            where = perm[c:c + 1] if act_order else slice(c, c + 1)
            q = grid.snap(W1[:, i:i + 1].float(), where)[:, 0]
            if keep is not None:
                q = torch.where(keep[:, c], q, torch.zeros_like(q))
            Q[:, c] = q
            err = (W1[:, i] - q.double()) / H1[i, i]
            W1[:, i + 1:] -= err[:, None] * H1[i, i + 1:][None, :]
            E1[:, i] = err
        W[:, i2:] -= E1 @ hinv[i1:i2, i2:]
    if act_order:
        Q = Q[:, torch.argsort(perm)]
    return Q
