"""The numbers each study plot draws, apart from the drawing (docs/plots.md): arms aggregated over seeds,
seed bands of the training curves in each run folder's metrics.jsonl, t-intervals, and the Pareto front.
Pure functions of the store's rows and the run folders, tested without matplotlib."""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from lmgolf.errors import LmgolfError
from lmgolf.study.results import NO_ARM
from lmgolf.study.stats import t_interval

# axis labels with units, for the store's metrics and the metrics log's fields
LABELS = {
    "val_loss": "validation loss (nats/token)", "val_bpb": "validation bits per byte",
    "artifact_bytes": "artifact size (bytes)", "params": "parameters", "train_flops": "training FLOPs",
    "tokens": "training tokens", "wall_time": "training time (s)", "steps": "optimizer steps",
    "loss": "training loss (nats/token)", "step": "optimizer step", "elapsed": "training time (s)",
}
CURVE_X = ("step", "tokens", "elapsed")
BANDS = ("std", "range")


def label(metric: str) -> str:
    return LABELS.get(metric, metric)


def natural_key(name: str) -> list:
    """v256 before v1024: the numbers in a name compared by value."""
    return [(0, int(part), "") if part.isdigit() else (1, 0, part) for part in re.split(r"(\d+)", name) if part]


def arm_order(rows: list[dict], baseline: str | None = None) -> list[str]:
    """The arms of a study: the baseline first, then by name, numbers in names by value (v256 before v1024)."""
    arms = {row.get("arm") or NO_ARM for row in rows}
    if baseline is not None and baseline not in arms:
        raise LmgolfError(f"plot: no arm {baseline!r} in the study (arms: {', '.join(sorted(arms))})")
    return ([baseline] if baseline is not None else []) + sorted((a for a in arms if a != baseline), key=natural_key)


def by_arm(rows: list[dict], baseline: str | None = None) -> dict[str, list[dict]]:
    groups = {arm: [] for arm in arm_order(rows, baseline)}
    for row in rows:
        groups[row.get("arm") or NO_ARM].append(row)
    return groups


# ---------------------------------------------------------------- intervals and fronts


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """Indices of the points no other point beats on both coordinates (lower cost x, lower metric y),
    ordered by x: a point is dropped when another has x <= its x and y <= its y, one of them strictly.
    Of points equal on both, the first is kept."""
    order = sorted(range(len(points)), key=lambda i: (points[i][0], points[i][1], i))
    front, best = [], math.inf
    for i in order:
        if points[i][1] < best:
            front.append(i)
            best = points[i][1]
    return front


# ---------------------------------------------------------------- per-arm points


@dataclass
class ArmPoint:
    """One arm's runs on two store metrics: the seeds' values and their mean ± std (and 95% t-interval of y)."""
    arm: str
    xs: list[float]
    ys: list[float]
    x: float
    y: float
    y_std: float | None
    y_lo: float | None
    y_hi: float | None

    @property
    def n(self) -> int:
        return len(self.ys)


def arm_points(rows: list[dict], x: str | None, y: str, baseline: str | None = None,
               confidence: float = 0.95) -> list[ArmPoint]:
    """Per arm, the runs that have both metrics (x None: y only); arms with none are left out."""
    points = []
    for arm, group in by_arm(rows, baseline).items():
        kept = [r for r in group if r.get(y) is not None and (x is None or r.get(x) is not None)]
        if not kept:
            continue
        ys = [float(r[y]) for r in kept]
        xs = [float(r[x]) for r in kept] if x is not None else []
        ci = t_interval(ys, confidence)
        points.append(ArmPoint(arm, xs, ys, float(np.mean(xs)) if xs else math.nan, ci.mean, ci.std, ci.lo, ci.hi))
    if not points:
        raise LmgolfError(f"plot: no run of the study has {y}" + (f" and {x}" if x else ""))
    return points


# ---------------------------------------------------------------- training curves


def read_metrics(run_dir: str | Path) -> list[dict]:
    """RUN/metrics.jsonl's records ([] when there is none; a torn line, as an interruption leaves, is skipped)."""
    path = Path(run_dir) / "metrics.jsonl"
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    except (OSError, UnicodeDecodeError) as e:
        raise LmgolfError(f"{path}: cannot read ({getattr(e, 'strerror', None) or e})") from None
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def curve(records: list[dict], y: str = "loss", x: str = "step") -> tuple[list[float], list[float]]:
    """(x, y) of the records that have both as numbers, by increasing x (the last record of an x wins).
    A record without x (a validation has no `tokens` or `elapsed`) gets it from the training records'
    step -> x, interpolated. Validation records of weight averages (`weights` other than raw) are left
    out: the raw weights' curve."""
    def number(v):
        return isinstance(v, (int, float)) and not isinstance(v, bool)

    known = sorted((r["step"], r[x]) for r in records if number(r.get("step")) and number(r.get(x)))
    points = {}
    for r in records:
        if r.get("weights", "raw") != "raw":
            continue
        xv, yv = r.get(x), r.get(y)
        if not number(xv) and number(r.get("step")) and known:
            xv = _x_at_step(r["step"], known)
        if number(xv) and number(yv) and math.isfinite(yv):
            points[float(xv)] = float(yv)
    xs = sorted(points)
    return xs, [points[v] for v in xs]


def _x_at_step(step: float, known: list[tuple[float, float]]) -> float:
    """x at a step, from (step, x) pairs: interpolated inside, extended along the mean slope past the last
    (a final validation can come after the last logged training step)."""
    (s0, x0), (s1, x1) = known[0], known[-1]
    if step > s1 and s1 > s0:
        return x1 + (step - s1) * (x1 - x0) / (s1 - s0)
    return float(np.interp(step, [k for k, _ in known], [v for _, v in known]))


@dataclass
class Band:
    """An arm's curve: the mean over its seeds and the band around it, on a common grid of x."""
    arm: str
    x: list[float]
    mean: list[float]
    lo: list[float]
    hi: list[float]
    seeds: int
    runs: list[tuple[list[float], list[float]]] = field(default_factory=list)  # each seed's own curve


def seed_band(arm: str, curves: list[tuple[list[float], list[float]]], band: str = "std") -> Band | None:
    """Mean and band (std: mean ± sample std; range: min to max) of several seeds' curves. The grid is
    every x any seed logged inside the range all of them cover; each curve is linearly interpolated
    onto it (exact where the seeds logged the same steps). None when no curve has a point."""
    if band not in BANDS:
        raise LmgolfError(f"plot: unknown band {band!r} (choose from {', '.join(BANDS)})")
    curves = [(xs, ys) for xs, ys in curves if xs]
    if not curves:
        return None
    start, end = max(xs[0] for xs, _ in curves), min(xs[-1] for xs, _ in curves)
    grid = sorted({v for xs, _ in curves for v in xs if start <= v <= end})
    values = np.array([np.interp(grid, xs, ys) for xs, ys in curves])
    mean = values.mean(axis=0)
    if band == "range":
        lo, hi = values.min(axis=0), values.max(axis=0)
    elif len(curves) > 1:
        std = values.std(axis=0, ddof=1)
        lo, hi = mean - std, mean + std
    else:
        lo = hi = mean
    return Band(arm, grid, mean.tolist(), lo.tolist(), hi.tolist(), len(curves), curves)


def curve_bands(rows: list[dict], y: str = "loss", x: str = "step", band: str = "std",
                baseline: str | None = None) -> list[Band]:
    """One Band per arm, from the metrics logs of the arm's run folders (the rows' paths)."""
    if x not in CURVE_X:
        raise LmgolfError(f"plot: unknown x axis {x!r} for curves (choose from {', '.join(CURVE_X)})")
    bands = []
    for arm, group in by_arm(rows, baseline).items():
        got = seed_band(arm, [curve(read_metrics(r["path"]), y, x) for r in group], band)
        if got is not None:
            bands.append(got)
    return bands
