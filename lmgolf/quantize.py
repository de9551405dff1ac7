"""Weight quantizers and the byte layouts that store them: pure tensor code, no file I/O.

Integer rows: symmetric, per row, b bits (2..8): codes in [-qmax, qmax] with qmax = 2^(b-1) - 1,
  scale = clip / qmax stored as fp16, w ~ code * scale. The clip comes from a rule: a quantile of |w|,
  k x the row's standard deviation, or a search for the lowest squared reconstruction error.
Ternary: codes in {-1, 0, +1} with one absmean scale per group of a row (BitNet b1.58), 5 trits a byte.
fp8: e4m3 values with one fp16 scale per row, so that each row spans the e4m3 range.

A *storage* (registered in STORAGES, used by lmgolf.packing.artifact) turns a float32 tensor into named blobs
plus JSON meta, and back. Dequantization always uses the stored fp16 scales, so a weight restored from
the blobs equals the quantizer's own dequantized weight bit for bit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

FP16_MAX = 65504.0
FP16_TINY = 2.0 ** -24  # the smallest positive fp16 (a subnormal)
INT_BITS = range(2, 9)
CLIP_RULES = ("percentile", "std", "search")
E4M3_MAX = 448.0

# search: a coarse grid of clip fractions of max|w|, then a fine one around each row's coarse winner
COARSE_FRACTIONS = [round(0.1 + 0.05 * i, 2) for i in range(19)]  # 0.10 .. 1.00
FINE_OFFSETS = [0.0025 * i for i in range(-10, 11)]                # -0.025 .. +0.025


def qmax(bits: int) -> int:
    return 2 ** (bits - 1) - 1


def as_rows(w: torch.Tensor) -> torch.Tensor:
    """The 2-D view that row-wise quantizers work on: first dimension by the rest (a vector is one row)."""
    return w.reshape(w.shape[0], math.prod(w.shape[1:])) if w.ndim >= 2 else w.reshape(1, -1)


def rows_shape(shape: list[int]) -> tuple[int, int]:
    n = math.prod(shape)
    return (shape[0], n // shape[0] if shape[0] else 0) if len(shape) >= 2 else (1, n)


# ---------------------------------------------------------------------------------------------------
# Integer rows


@dataclass
class IntRows:
    codes: torch.Tensor   # int8, rows x cols, within [-qmax, qmax]
    scales: torch.Tensor  # fp16, one per row
    clipped: float        # share of entries whose |w| exceeds their row's clip


def row_quantile(w: torch.Tensor, q: float) -> torch.Tensor:
    """torch.quantile(w, q, dim=1) with linear interpolation, built on kthvalue: quantile refuses
    inputs above 16M elements, which an embedding or MLP matrix can reach."""
    pos = q * (w.size(1) - 1)
    lo = int(pos)
    hi = min(lo + 1, w.size(1) - 1)
    low = w.kthvalue(lo + 1, dim=1).values
    high = w.kthvalue(hi + 1, dim=1).values
    return torch.lerp(low, high, pos - lo)


def fp16_scales(clip: torch.Tensor, top: float, min_scale: float = 0.0) -> torch.Tensor:
    """fp16 scales for clip / top, rounded up so that clip / scale <= top: every unclipped weight
    then lands within half a step."""
    wanted = (clip / top).clamp(min=max(min_scale, FP16_TINY), max=FP16_MAX)
    scale = wanted.half()
    too_small = scale.float() < wanted
    return torch.where(too_small, torch.nextafter(scale, torch.full_like(scale, float("inf"))), scale)


def quantize_rows(w: torch.Tensor, bits: int, clip: torch.Tensor, min_scale: float = 0.0) -> IntRows:
    """Rows of w (2-D float32) to b-bit codes, each row clipped at its entry of clip."""
    top = qmax(bits)
    limit = clip[:, None]
    scales = fp16_scales(clip, top, min_scale)
    codes = torch.round(torch.clamp(w, -limit, limit) / scales.float()[:, None]).clamp(-top, top)
    clipped = int((w.abs() > limit).sum()) / w.numel() if w.numel() else 0.0
    return IntRows(codes.to(torch.int8), scales, clipped)


def dequantize_rows(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return codes.float() * scales.float()[:, None]


def std_clip(w: torch.Tensor, k: float) -> torch.Tensor:
    """k x the row's standard deviation ("SDClip"), never beyond the row's max |w|."""
    return torch.minimum(k * w.std(dim=1, correction=0), w.abs().amax(dim=1))


def search_clip(w: torch.Tensor, bits: int, min_scale: float = 0.0) -> torch.Tensor:
    """Per row, the clip fraction of max |w| with the lowest squared reconstruction error, from a coarse
    grid and then a fine one around the coarse winner. Fraction 1 is a candidate, so the search never
    does worse than clipping at the max."""
    absmax = w.abs().amax(dim=1)
    coarse = _best_fraction(w, bits, absmax, [torch.full_like(absmax, f) for f in COARSE_FRACTIONS], min_scale)
    fine = [(coarse + d).clamp(0.01, 1.0) for d in FINE_OFFSETS]
    return absmax * _best_fraction(w, bits, absmax, fine, min_scale)


def _best_fraction(w: torch.Tensor, bits: int, absmax: torch.Tensor, candidates: list[torch.Tensor],
                   min_scale: float) -> torch.Tensor:
    best, best_error = candidates[0], torch.full_like(absmax, float("inf"))
    for fraction in candidates:
        q = quantize_rows(w, bits, absmax * fraction, min_scale)
        error = (dequantize_rows(q.codes, q.scales) - w).square().sum(dim=1)
        better = error < best_error
        best, best_error = torch.where(better, fraction, best), torch.where(better, error, best_error)
    return best


def row_clip(w: torch.Tensor, bits: int, rule: str, quantile: float = 0.9999984, k: float = 4.0,
             min_scale: float = 0.0) -> torch.Tensor:
    """The clip of every row of w (2-D float32) under a clip rule."""
    if rule == "percentile":
        return row_quantile(w.abs(), quantile)
    if rule == "std":
        return std_clip(w, k)
    if rule == "search":
        return search_clip(w, bits, min_scale)
    raise ValueError(f"unknown clip rule {rule!r} (one of {', '.join(CLIP_RULES)})")


# ---------------------------------------------------------------------------------------------------
# Bit packing: code i occupies bits [i*b, (i+1)*b) of a little-endian bit stream (int6: 4 codes in 3 bytes)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    offset = (codes.reshape(-1).numpy().astype(np.int16) + qmax(bits)).astype(np.uint8)
    stream = np.unpackbits(offset[:, None], axis=1, count=bits, bitorder="little")
    return torch.from_numpy(np.packbits(stream.reshape(-1), bitorder="little"))


def unpack_bits(packed: torch.Tensor, bits: int, count: int) -> torch.Tensor:
    if packed.numel() != math.ceil(count * bits / 8):
        raise ValueError(f"{packed.numel()} bytes do not hold exactly {count} codes of {bits} bits")
    stream = np.unpackbits(packed.numpy(), count=count * bits, bitorder="little").reshape(count, bits)
    offset = np.packbits(stream, axis=1, bitorder="little")[:, 0]
    return torch.from_numpy(offset.astype(np.int16) - qmax(bits)).to(torch.int8)


def packed_bytes_period(bits: int) -> int:
    """Bytes after which the bit layout repeats (int6: 3, int5: 5, int4: 1)."""
    return math.lcm(bits, 8) // 8


# ---------------------------------------------------------------------------------------------------
# Ternary


@dataclass
class Ternary:
    codes: torch.Tensor   # int8 in {-1, 0, 1}, rows x cols
    scales: torch.Tensor  # fp16, rows x groups: the mean |w| of each group of `group` consecutive columns


def quantize_ternary(w: torch.Tensor, group: int = 64) -> Ternary:
    cols = w.shape[1]
    groups = math.ceil(cols / group)
    padded = torch.nn.functional.pad(w.abs(), (0, groups * group - cols)).reshape(w.shape[0], groups, group)
    sizes = torch.full((groups,), float(group))
    sizes[-1] = cols - (groups - 1) * group
    scales = (padded.sum(dim=2) / sizes).clamp(max=FP16_MAX).half()
    per_column = _per_column(scales, group, cols).clamp(min=FP16_TINY)  # a zero scale restores zeros anyway
    codes = torch.round(torch.clamp(w / per_column, -1, 1)).to(torch.int8)
    return Ternary(codes, scales)


def dequantize_ternary(codes: torch.Tensor, scales: torch.Tensor, group: int) -> torch.Tensor:
    if scales.shape[1] != math.ceil(codes.shape[1] / group):
        raise ValueError(f"{scales.shape[1]} scales per row do not match groups of {group}")
    return codes.float() * _per_column(scales, group, codes.shape[1])


def _per_column(scales: torch.Tensor, group: int, cols: int) -> torch.Tensor:
    return scales.float().repeat_interleave(group, dim=1)[:, :cols]


TRIT_WEIGHTS = np.array([1, 3, 9, 27, 81], dtype=np.uint8)  # 5 trits a byte: 3^5 = 243 <= 256


def pack_trits(codes: torch.Tensor) -> torch.Tensor:
    digits = (codes.reshape(-1).numpy() + 1).astype(np.uint8)
    digits = np.pad(digits, (0, -len(digits) % 5)).reshape(-1, 5)
    return torch.from_numpy((digits * TRIT_WEIGHTS).sum(axis=1, dtype=np.uint8))


def unpack_trits(packed: torch.Tensor, count: int) -> torch.Tensor:
    if packed.numel() != math.ceil(count / 5):
        raise ValueError(f"{packed.numel()} bytes do not hold exactly {count} trits")
    digits = packed.numpy()[:, None] // TRIT_WEIGHTS % 3
    return torch.from_numpy(digits.reshape(-1)[:count].astype(np.int8) - 1)


# ---------------------------------------------------------------------------------------------------
# fp8 e4m3 (sign, 4 exponent bits with bias 7, 3 mantissa bits; no infinities, 0x7f and 0xff are NaN)


def _e4m3_values() -> torch.Tensor:
    codes = torch.arange(256)
    exponent, mantissa = (codes >> 3) & 15, (codes & 7).double()
    normal = (1 + mantissa / 8) * torch.pow(2.0, exponent.double() - 7)
    subnormal = mantissa / 8 * 2.0 ** -6
    magnitude = torch.where(exponent == 0, subnormal, normal)
    magnitude[[0x7F, 0xFF]] = float("nan")
    return torch.where(codes >= 128, -magnitude, magnitude).float()


E4M3_VALUES = _e4m3_values()  # code -> value


def e4m3_codes(x: torch.Tensor) -> torch.Tensor:
    """float32 within [-448, 448] -> uint8 e4m3 codes, rounding to nearest, ties to even."""
    if hasattr(torch, "float8_e4m3fn"):
        return x.to(torch.float8_e4m3fn).view(torch.uint8)
    return e4m3_codes_by_table(x)


def e4m3_codes_by_table(x: torch.Tensor) -> torch.Tensor:
    """The same rounding without torch's float8 dtype: nearest of the 127 non-negative finite values."""
    ladder = E4M3_VALUES[:0x7F]
    a = x.abs()
    upper = torch.searchsorted(ladder, a.contiguous()).clamp(max=0x7E)
    lower = (upper - 1).clamp(min=0)
    below, above = a - ladder[lower], ladder[upper] - a
    take_upper = (above < below) | ((above == below) & (upper % 2 == 0))
    magnitude = torch.where(take_upper, upper, lower)
    return (magnitude + 128 * torch.signbit(x)).to(torch.uint8)


def quantize_fp8_rows(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(uint8 e4m3 codes, fp16 row scales): each row is scaled so that its max |w| maps to at most 448."""
    scales = fp16_scales(w.abs().amax(dim=1), E4M3_MAX)
    return e4m3_codes((w / scales.float()[:, None]).clamp(-E4M3_MAX, E4M3_MAX)), scales


def dequantize_fp8_rows(codes: torch.Tensor, scales: torch.Tensor) -> torch.Tensor:
    return E4M3_VALUES[codes.long()] * scales.float()[:, None]


# ---------------------------------------------------------------------------------------------------
# Byte shuffle: the k-th byte of every `width`-byte value together, so that sign and exponent bytes,
# which repeat a lot, sit next to each other for the compressor. A tail shorter than width stays last.


def shuffle_bytes(data: bytes, width: int) -> bytes:
    whole = len(data) // width * width
    values = np.frombuffer(data, dtype=np.uint8, count=whole).reshape(-1, width)
    return values.T.tobytes() + data[whole:]


def unshuffle_bytes(data: bytes, width: int) -> bytes:
    whole = len(data) // width * width
    planes = np.frombuffer(data, dtype=np.uint8, count=whole).reshape(width, -1)
    return planes.T.tobytes() + data[whole:]


# ---------------------------------------------------------------------------------------------------
# Storages. A storage first fixes a *grid* for one tensor (its scales, from the clip rule), then rounds
# values onto it (snap) and stores the rounded values (encode). Plain packing is encode(snap(w)); GPTQ
# snaps column by column and spreads each column's error over the next ones; QAT snaps in the forward
# pass. All three therefore use exactly the same quantizer. The policy is lmgolf.packing.artifact.PackPolicy;
# a storage reads only the fields it needs.

Blobs = dict[str, torch.Tensor]


@dataclass(frozen=True)
class Grid:
    """One tensor's quantizer with its scales fixed. Both functions work on the 2-D rows view (as_rows).
    snap(x, cols): values x of columns `cols` rounded onto the grid (dequantized, float32, differentiable
      only through a straight-through estimator); encode(snapped): exact blobs and meta of a snapped view."""
    snap: Callable[[torch.Tensor, slice], torch.Tensor]
    encode: Callable[[torch.Tensor], tuple[Blobs, dict]]


@dataclass(frozen=True)
class Storage:
    grid: Callable[[torch.Tensor, object], Grid]
    dequantize: Callable[[Blobs, dict, list[int]], torch.Tensor]
    quantizer: bool = True  # False for plain float storage, which suits tensors of any size
    # bytes after which a blob's layout repeats, by role and meta (None: its element size); byte shuffle uses it
    period: Callable[[str, dict], int | None] = lambda role, meta: None

    def quantize(self, w: torch.Tensor, policy) -> tuple[Blobs, dict]:
        grid = self.grid(w, policy)
        return grid.encode(grid.snap(as_rows(w), slice(None)))


def _int_rows_storage(bits: int) -> Storage:
    top = qmax(bits)

    def grid(w: torch.Tensor, policy) -> Grid:
        rows = as_rows(w.detach())
        clip = row_clip(rows, bits, policy.clip, policy.clip_quantile, policy.clip_k, policy.min_scale)
        scales = fp16_scales(clip, top, policy.min_scale)
        step, limit = scales.float()[:, None], clip[:, None]
        meta = {"clip": policy.clip, **_clip_params(policy),
                "clipped": int((rows.abs() > limit).sum()) / rows.numel() if rows.numel() else 0.0}

        def snap(x: torch.Tensor, cols: slice) -> torch.Tensor:
            return torch.round(torch.clamp(x, -limit, limit) / step).clamp(-top, top) * step

        def encode(snapped: torch.Tensor) -> tuple[Blobs, dict]:
            codes = torch.round(snapped / step).to(torch.int8)
            if bits == 8:  # one byte a code, as format version 1 always stored int8-row
                return {"q": codes, "scale": scales}, meta
            packed = policy.packs_bits(bits)
            return {"q": pack_bits(codes, bits) if packed else codes, "scale": scales}, {**meta, "packed": packed}

        return Grid(snap, encode)

    def load(blobs: Blobs, meta: dict, shape: list[int]) -> torch.Tensor:
        codes = blobs["q"]
        if meta.get("packed"):
            rows, cols = rows_shape(shape)
            codes = unpack_bits(codes, bits, rows * cols).reshape(rows, cols)
        return dequantize_rows(codes.reshape(blobs["scale"].shape[0], -1), blobs["scale"])

    def period(role: str, meta: dict) -> int | None:
        return packed_bytes_period(bits) if role == "q" and meta.get("packed") else None

    return Storage(grid, load, period=period)


def _clip_params(policy) -> dict:
    return {"percentile": {"quantile": policy.clip_quantile}, "std": {"k": policy.clip_k}}.get(policy.clip, {})


def _ternary_grid(w: torch.Tensor, policy) -> Grid:
    group = policy.ternary_group
    scales = quantize_ternary(as_rows(w.detach()), group).scales
    per_column = _per_column(scales, group, as_rows(w).shape[1])
    divisor = per_column.clamp(min=FP16_TINY)  # a zero scale restores zeros anyway

    def snap(x: torch.Tensor, cols: slice) -> torch.Tensor:
        return torch.round(torch.clamp(x / divisor[:, cols], -1, 1)) * per_column[:, cols]

    def encode(snapped: torch.Tensor) -> tuple[Blobs, dict]:
        codes = torch.round(snapped / divisor).to(torch.int8)
        return {"trits": pack_trits(codes), "scale": scales}, {"group": group}

    return Grid(snap, encode)


def _load_ternary(blobs: Blobs, meta: dict, shape: list[int]) -> torch.Tensor:
    rows, cols = rows_shape(shape)
    group = meta.get("group")
    if not isinstance(group, int) or group < 1:
        raise ValueError(f"bad group size {group!r}")
    return dequantize_ternary(unpack_trits(blobs["trits"], rows * cols).reshape(rows, cols), blobs["scale"], group)


def _fp8_grid(w: torch.Tensor, policy) -> Grid:
    scales = fp16_scales(as_rows(w.detach()).abs().amax(dim=1), E4M3_MAX)
    step = scales.float()[:, None]

    def snap(x: torch.Tensor, cols: slice) -> torch.Tensor:
        codes = e4m3_codes((x.detach() / step).clamp(-E4M3_MAX, E4M3_MAX))
        return E4M3_VALUES.to(x.device)[codes.long()] * step

    def encode(snapped: torch.Tensor) -> tuple[Blobs, dict]:
        return {"e4m3": e4m3_codes(snapped / step), "scale": scales}, {}

    return Grid(snap, encode)


def _load_fp8_rows(blobs: Blobs, meta: dict, shape: list[int]) -> torch.Tensor:
    return dequantize_fp8_rows(blobs["e4m3"].reshape(blobs["scale"].shape[0], -1), blobs["scale"])


def _float_storage(name: str, dtype: torch.dtype, top: float | None) -> Storage:
    def grid(w: torch.Tensor, policy) -> Grid:
        if top is not None and w.numel() and w.detach().abs().max() > top:
            raise ValueError(f"values beyond the {name} range; keep it in fp32 (PackPolicy.keep_fp32)")
        return Grid(lambda x, cols: x.to(dtype).float(),
                    lambda snapped: ({"values": snapped.reshape(w.shape).to(dtype)}, {}))

    return Storage(grid, lambda blobs, meta, shape: blobs["values"].float(), quantizer=False)


STORAGES: dict[str, Storage] = {
    **{f"int{b}-row": _int_rows_storage(b) for b in reversed(INT_BITS)},
    "ternary": Storage(_ternary_grid, _load_ternary),
    "fp8-row": Storage(_fp8_grid, _load_fp8_rows),
    "fp16": _float_storage("fp16", torch.float16, FP16_MAX),
    "bf16": _float_storage("bf16", torch.bfloat16, None),
    "fp32": _float_storage("fp32", torch.float32, None),
}
