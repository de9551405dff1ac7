"""Magnitude pruning and low-rank error correction, two ways to spend fewer bytes or fix what they cost.

Magnitude pruning (Han et al., 2015; in the one-shot setting of Zhu & Gupta, 2017): the weights of
smallest |w| are set to zero. A run of zeros costs the entropy coder little, so sparsity buys
compressed bytes. `scope="tensor"` prunes the same share of every tensor; `scope="global"` ranks the
chosen tensors' weights together, so tensors of small weights lose more. Counts are exact:
round(s x n) weights (Python's round, ties to even), ties in |w| broken by position (stable sort), so
the masks are deterministic. Pruned weights are exactly zero on every grid of lmgolf.quantize; with GPTQ,
pass the mask as `keep` so that error feedback neither revives them nor leaves their error uncorrected.

Low-rank correction (in the spirit of LQ-LoRA / ZeroQuant-V2's LoRC): the quantization error
E = W - Q of a matrix is approximated by its best rank-r approximation in Frobenius norm (Eckart-Young),
the truncated SVD E ~ U_r S_r V_r^T, stored as two fp16 factors A = U_r sqrt(S_r) and
B = sqrt(S_r) V_r^T (the singular values split evenly, so both factors have the same scale and fp16
range), and the restored weight is Q + A @ B. It costs r x (rows + cols) x 2 bytes.
"""

from __future__ import annotations

import torch

FP16_MAX = 65504.0
SCOPES = ("tensor", "global")


def _prune_lowest(magnitudes: torch.Tensor, count: int) -> torch.Tensor:
    """Keep-mask (flat) that drops the `count` smallest entries, the earlier position first among equals."""
    keep = torch.ones(magnitudes.numel(), dtype=torch.bool, device=magnitudes.device)
    if count:
        order = torch.sort(magnitudes, stable=True).indices
        keep[order[:count]] = False
    return keep


def magnitude_masks(tensors: dict[str, torch.Tensor], sparsity: float,
                    scope: str = "tensor") -> dict[str, torch.Tensor]:
    """Boolean keep-masks (True: keep) of the same shapes: per tensor, round(sparsity x numel) entries of
    smallest |w| dropped ("tensor"), or round(sparsity x total) over all tensors together ("global",
    ranked in the dict's order). NaN counts as largest, so it is never the one pruned."""
    if not 0 <= sparsity <= 1:
        raise ValueError(f"sparsity {sparsity} does not lie in [0, 1]")
    if scope not in SCOPES:
        raise ValueError(f"unknown pruning scope {scope!r} (one of {', '.join(SCOPES)})")
    flat = {name: t.detach().abs().float().reshape(-1) for name, t in tensors.items()}
    if scope == "tensor":
        return {name: _prune_lowest(m, round(sparsity * m.numel())).reshape(tensors[name].shape)
                for name, m in flat.items()}
    if not flat:
        return {}
    device = next(iter(flat.values())).device
    together = torch.cat([m.to(device) for m in flat.values()])
    keep = _prune_lowest(together, round(sparsity * together.numel()))
    masks, start = {}, 0
    for name, m in flat.items():
        masks[name] = keep[start:start + m.numel()].reshape(tensors[name].shape).to(tensors[name].device)
        start += m.numel()
    return masks


def apply_masks(tensors: dict[str, torch.Tensor], masks: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Copies of the tensors with the dropped entries set to +0 (tensors without a mask unchanged)."""
    return {name: torch.where(masks[name], t, torch.zeros_like(t)) if name in masks else t.clone()
            for name, t in tensors.items()}


def lowrank_correction(error: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """fp16 factors A (rows x r) and B (r x cols) with A @ B the best rank-r approximation of the
    quantization error E = W - Q (a 2-D rows view), r = min(rank, rows, cols): the truncated SVD with
    sqrt of the singular values on both sides. Restore as Q + A.float() @ B.float()."""
    if error.ndim != 2:
        raise ValueError(f"expected a 2-D error matrix, got shape {list(error.shape)}")
    if rank < 0:
        raise ValueError(f"rank {rank} must be >= 0")
    r = min(rank, *error.shape)
    u, s, vh = torch.linalg.svd(error.detach().float(), full_matrices=False)
    root = s[:r].sqrt()
    a = (u[:, :r] * root[None, :]).clamp(-FP16_MAX, FP16_MAX)
    b = (root[:, None] * vh[:r]).clamp(-FP16_MAX, FP16_MAX)
    return a.half().contiguous(), b.half().contiguous()
