"""A study's figures, drawn with matplotlib off screen (the Agg renderer) as PNG and SVG (docs/plots.md):

  curves    training loss (and periodic validation) per arm: the mean over seeds with a band
  params    the metric against parameters, per arm
  flops     the metric against training FLOPs, with the Pareto front of the arms' means
  ablation  each arm's mean with its 95% t-interval over seeds, as bars from the baseline arm's mean
  vocab     bpb against bytes per token, forward FLOPs per byte and measured generation time per byte

Each figure is written as KIND.png and KIND.svg with KIND.json beside it: the numbers it draws.
The numbers come from lmgolf.study.plotdata and lmgolf.study.vocab_cost; this module only draws.
matplotlib is an optional dependency (pip install 'lmgolf[plots]').
"""

from __future__ import annotations

import dataclasses
import io
import json
from pathlib import Path

from lmgolf.errors import LmgolfError
from lmgolf.runfiles import atomic_write_bytes, atomic_write_text
from lmgolf.study import plotdata as pd
from lmgolf.study.results import COMPARABLE, study_results
from lmgolf.study.stats import GOLF_MIN_DELTA
from lmgolf.study.vocab_cost import vocab_points

KINDS = ("curves", "params", "flops", "ablation", "vocab")
FORMATS = ("png", "svg")
STYLE = {"font.size": 9, "axes.titlesize": 10, "axes.labelsize": 9, "legend.fontsize": 8, "axes.grid": True,
         "grid.alpha": 0.3, "axes.spines.top": False, "axes.spines.right": False, "svg.hashsalt": "lmgolf",
         "savefig.dpi": 110}


def require_matplotlib():
    try:
        import matplotlib
        from matplotlib.figure import Figure
    except ImportError:
        raise LmgolfError("plot: needs matplotlib (pip install 'lmgolf[plots]')") from None
    return matplotlib, Figure


def colors(arms: list[str]) -> dict[str, str]:
    """One color per arm, the same in every figure of a study."""
    return {arm: f"C{i % 10}" for i, arm in enumerate(arms)}


def save(fig, data, out_dir: str | Path, name: str, formats=FORMATS) -> list[Path]:
    """KIND.png / KIND.svg (atomically) and KIND.json, the data drawn."""
    out_dir = Path(out_dir)
    written = []
    for fmt in formats:
        if fmt not in FORMATS:
            raise LmgolfError(f"plot: unknown format {fmt!r} (choose from {', '.join(FORMATS)})")
        buf = io.BytesIO()
        fig.savefig(buf, format=fmt, bbox_inches="tight", metadata={"Date": None} if fmt == "svg" else None)
        atomic_write_bytes(out_dir / f"{name}.{fmt}", buf.getvalue())
        written.append(out_dir / f"{name}.{fmt}")
    atomic_write_text(out_dir / f"{name}.json", json.dumps(data, indent=1, default=_jsonable) + "\n")
    written.append(out_dir / f"{name}.json")
    return written


def _jsonable(value):
    if dataclasses.is_dataclass(value):
        return dataclasses.asdict(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def _metric(metric: str) -> str:
    if metric not in COMPARABLE:
        raise LmgolfError(f"plot: unknown metric {metric!r} (choose from {', '.join(COMPARABLE)})")
    return metric


# ---------------------------------------------------------------- curves


def plot_curves(rows, study: str, metric: str = "val_bpb", x: str = "step", band: str = "std",
                baseline: str | None = None):
    _, Figure = require_matplotlib()
    train = pd.curve_bands(rows, "loss", x, band, baseline)
    if not train:
        raise LmgolfError(f"plot curves: no run of study {study!r} has a metrics log with training loss "
                          "(RUN/metrics.jsonl)")
    val = [b for b in pd.curve_bands(rows, metric, x, band, baseline) if len(b.x) >= 2] \
        if metric in ("val_loss", "val_bpb") else []
    arms = pd.arm_order(rows, baseline)
    color = colors(arms)
    fig = Figure(figsize=(10.5 if val else 6.2, 4.0), layout="constrained")
    axes = fig.subplots(1, 2 if val else 1, squeeze=False)[0]
    spread = "± 1 std" if band == "std" else "min to max"
    for ax, bands, y in zip(axes, (train, val), ("loss", metric)):
        for b in bands:
            c = color[b.arm]
            ax.plot(b.x, b.mean, color=c, lw=1.4, label=f"{b.arm} (n={b.seeds})", marker="o" if len(b.x) <= 12 else None,
                    ms=3.5)
            if b.seeds > 1:
                ax.fill_between(b.x, b.lo, b.hi, color=c, alpha=0.2, lw=0)
        ax.set_xlabel(pd.label(x))
        ax.set_ylabel(pd.label(y))
        if x == "tokens":
            from matplotlib.ticker import EngFormatter
            ax.xaxis.set_major_formatter(EngFormatter(places=None, sep=""))
    axes[0].set_title(f"{study}: training loss, mean over seeds (band {spread})")
    if val:
        axes[1].set_title(f"{study}: {pd.label(metric)} during training")
    axes[0].legend(loc="upper right", frameon=False)
    _clip_loss_axis(axes[0], train)
    data = {"kind": "curves", "study": study, "x": x, "band": band, "train": train, "validation": val}
    return fig, data


def _clip_loss_axis(ax, bands) -> None:
    """The first steps' loss (ln V and above) would flatten the rest: show from the lowest band to a bit
    above where the curves are after their first tenth."""
    low = min(min(b.lo) for b in bands)
    later = [b.hi[len(b.hi) // 10:] for b in bands]
    top = max(max(h) for h in later if h)
    first = max(max(b.hi) for b in bands)
    if first > top + 2 * (top - low):
        ax.set_ylim(low - 0.05 * (top - low), top + 0.35 * (top - low))


# ---------------------------------------------------------------- metric against a cost


def plot_against(rows, study: str, cost: str, metric: str = "val_bpb", baseline: str | None = None,
                 front: bool = False):
    """The metric against a cost (params or train_flops), log x; the Pareto front of the arms' means."""
    _, Figure = require_matplotlib()
    metric = _metric(metric)
    points = pd.arm_points(rows, cost, metric, baseline)
    color = colors(pd.arm_order(rows, baseline))
    fig = Figure(figsize=(6.6, 4.3), layout="constrained")
    ax = fig.subplots()
    dodge = _dodge([p.x for p in points])
    for i, p in enumerate(points):
        c, marker = color[p.arm], "osD^v<>"[(i // 10) % 7]
        ax.scatter([x * dodge[i] for x in p.xs], p.ys, color=c, s=12, alpha=0.35, lw=0, marker=marker)
        ax.errorbar([p.x * dodge[i]], [p.y], yerr=[[p.y - p.y_lo], [p.y_hi - p.y]] if p.y_lo is not None else None,
                    fmt=marker, color=c, ms=6, capsize=3, lw=1.2, label=f"{p.arm} (n={p.n})")
    on_front = pd.pareto_front([(p.x, p.y) for p in points]) if front else []
    if on_front:
        fx, fy = [points[i].x for i in on_front], [points[i].y for i in on_front]
        ax.step(fx, fy, where="post", color="0.25", lw=1, ls="--", zorder=0, label="Pareto front (arm means)")
        ax.scatter(fx, fy, s=140, facecolors="none", edgecolors="0.25", lw=1, zorder=3)
    _log_axis(ax, [x for p in points for x in p.xs])
    ax.set_xlabel(pd.label(cost) + " (log scale)")
    ax.set_ylabel(pd.label(metric))
    what = "training FLOPs" if cost == "train_flops" else "parameters"
    ax.set_title(f"{study}: {metric} vs {what}\n(arm mean with 95% t-interval over seeds; small dots: seeds)")
    ax.legend(loc="best", frameon=False, ncol=2 if len(points) > 6 else 1)
    data = {"kind": "flops" if cost == "train_flops" else "params", "study": study, "x": cost, "y": metric,
            "arms": points, "pareto_front": [points[i].arm for i in on_front]}
    return fig, data


def _dodge(xs: list[float], step: float = 1.025) -> list[float]:
    """Factors that spread points of equal x apart on a log axis (the first stays, the next move right...)."""
    seen: dict[float, int] = {}
    out = []
    for x in xs:
        k = seen.get(round(x, 6), 0)
        seen[round(x, 6)] = k + 1
        out.append(step ** k)
    return out


def _log_axis(ax, values: list[float]) -> None:
    """Log x with compact engineering labels (40k, 1.2M, 60G). Within a decade the minor ticks are labeled
    too: all of them over less than 3x, else those at 2, 3 and 5 (long labels would run together)."""
    import math

    from matplotlib.ticker import EngFormatter, FuncFormatter, NullFormatter
    ax.set_xscale("log")
    eng = EngFormatter(places=None, sep="")
    ax.xaxis.set_major_formatter(eng)
    ratio = max(values) / min(values) if min(values) > 0 else math.inf
    if ratio >= 10:
        ax.xaxis.set_minor_formatter(NullFormatter())
    else:
        def minor(x, pos):
            lead = round(x / 10 ** math.floor(math.log10(x) + 1e-9))
            return eng(x) if ratio < 3 or lead in (2, 3, 5) else ""
        ax.xaxis.set_minor_formatter(FuncFormatter(minor))
    ax.tick_params(axis="x", which="both", labelsize=8)


# ---------------------------------------------------------------- ablation


def plot_ablation(rows, study: str, metric: str = "val_bpb", baseline: str | None = None,
                  confidence: float = 0.95, min_delta: float = GOLF_MIN_DELTA):
    """Horizontal bars from the baseline's mean to each arm's (without a baseline: the means alone), each
    with its 95% t-interval over seeds; the baseline's interval shaded; the golf rule's verdict beside."""
    _, Figure = require_matplotlib()
    metric = _metric(metric)
    points = pd.arm_points(rows, None, metric, baseline, confidence)
    table = study_results(rows, study, baseline=baseline, metric=metric, min_delta=min_delta) if baseline else None
    verdict = {a.arm: a for a in table.arms} if table else {}
    color = colors(pd.arm_order(rows, baseline))
    fig = Figure(figsize=(7.4, 0.9 + 0.42 * len(points)), layout="constrained")
    ax = fig.subplots()
    ref = next((p for p in points if p.arm == baseline), None)
    labels = []
    for i, p in enumerate(points):
        y = -i
        if ref is not None and p is not ref:
            better = p.y < ref.y
            ax.barh(y, p.y - ref.y, left=ref.y, height=0.55, color="tab:green" if better else "tab:red", alpha=0.45)
        ax.errorbar([p.y], [y], xerr=[[p.y - p.y_lo], [p.y_hi - p.y]] if p.y_lo is not None else None,
                    fmt="o", color=color[p.arm], ms=5, capsize=3, lw=1.2)
        ax.scatter(p.ys, [y] * p.n, color="k", s=6, alpha=0.5, zorder=3, lw=0)
        labels.append(f"{p.arm} (n={p.n})")
        a = verdict.get(p.arm)
        if a is not None and p is not ref and a.improvement is not None:
            text = f"improvement {a.improvement:+.4f}" + (
                f", p={a.test.p_less:.3g}" + (" ✓ golf rule" if a.golf else "") if a.test is not None else ", p n/a")
            ax.annotate(text, (1.0, y), xycoords=("axes fraction", "data"), xytext=(4, 0),
                        textcoords="offset points", va="center", fontsize=7.5)
    if verdict:
        ax.annotate(f"improvement = {baseline} − arm,\np: one-sided Welch t-test", (1.0, 0),  # the baseline's row
                    xycoords=("axes fraction", "data"), xytext=(4, 0), textcoords="offset points", va="center",
                    fontsize=7.5, color="0.35")
    if ref is not None:
        ax.axvline(ref.y, color="0.3", lw=1, ls="--")
        if ref.y_lo is not None:
            ax.axvspan(ref.y_lo, ref.y_hi, color="0.5", alpha=0.12, lw=0)
        ax.axvline(ref.y - min_delta, color="tab:green", lw=0.8, ls=":")
    ax.set_yticks([-i for i in range(len(points))], labels)
    ax.grid(axis="y", visible=False)
    ax.set_xlabel(pd.label(metric) + " (lower is better)")
    title = f"{study}: {metric}, mean and {confidence:.0%} t-interval over seeds (dots: seeds)"
    if ref is not None:
        title += f"\nbars: change from {baseline}; shaded: its interval; dotted: {baseline} − {min_delta:g}"
    ax.set_title(title, loc="left")
    data = {"kind": "ablation", "study": study, "metric": metric, "baseline": baseline, "confidence": confidence,
            "arms": [{"arm": p.arm, "n": p.n, "mean": p.y, "lo": p.y_lo, "hi": p.y_hi, "values": p.ys,
                      "improvement": verdict[p.arm].improvement if p.arm in verdict else None,
                      "p_one_sided": verdict[p.arm].test.p_less if verdict.get(p.arm) and verdict[p.arm].test else None,
                      "golf_rule": verdict[p.arm].golf if p.arm in verdict else None} for p in points]}
    return fig, data


# ---------------------------------------------------------------- vocabulary


def plot_vocab(rows, study: str, baseline: str | None = None, generation: dict | None = None):
    """Three panels: bpb against bytes per token (quality), forward FLOPs per byte (compute) and measured
    generation time per byte (speed on this machine), the arms by increasing vocabulary size."""
    _, Figure = require_matplotlib()
    from matplotlib.ticker import EngFormatter
    points = vocab_points(rows, baseline, generation)
    color = colors(pd.arm_order(rows, baseline))
    fig = Figure(figsize=(13.0, 4.0), layout="constrained")
    quality, flops, speed = fig.subplots(1, 3)
    for p in points:
        quality.errorbar([p.bytes_per_token], [p.bpb], yerr=p.bpb_std, fmt="o", color=color[p.arm], capsize=3, ms=6)
        quality.annotate(_vocab_name(p) + _params_note(p), (p.bytes_per_token, p.bpb), xytext=(6, 3),
                         textcoords="offset points", fontsize=7.5, va="center")
    quality.margins(x=0.3, y=0.12)
    quality.set_xlabel("validation bytes per token")
    quality.set_ylabel(pd.label("val_bpb"))
    quality.set_title("quality: bits per byte vs bytes per token\n(mean ± std over seeds)")
    names = [_vocab_name(p).replace(" (", "\n(") for p in points]
    for ax, attr, ylabel, title, unit in (
            (flops, "flops_per_byte", "forward FLOPs per byte of text", "compute: forward FLOPs per byte\n"
             "(FLOPs per token / bytes per token; lookups cost none)", "FLOP"),
            (speed, "microseconds_per_byte", "generation time per byte (µs)",
             "measured: greedy generation time per byte\n", "")):
        values = [getattr(p, attr) for p in points]
        where = [i for i, v in enumerate(values) if v is not None]
        bars = ax.bar(where, [values[i] for i in where], color=[color[points[i].arm] for i in where], alpha=0.85,
                      width=0.6)
        ax.bar_label(bars, labels=[EngFormatter(unit=unit, places=1, sep=" " if unit else "")(values[i])
                                   for i in where], fontsize=7.5, padding=2)
        ax.set_xticks(range(len(points)), names, fontsize=8)
        ax.set_xlim(-0.6, len(points) - 0.4)
        ax.margins(y=0.12)
        ax.yaxis.set_major_formatter(EngFormatter(unit=unit, places=0, sep=" " if unit else ""))
        ax.set_ylabel(ylabel)
        ax.set_title(title)
        ax.grid(axis="x", visible=False)
        if not where:
            ax.set_yticks([])
            ax.text(0.5, 0.5, "not measured: add --measure-generation" if unit == "" else "no run folders with "
                    "config.json", transform=ax.transAxes, ha="center", va="center", color="0.4")
    measured = next(iter((generation or {}).values()), None)
    if measured:
        speed.set_title(f"measured: greedy generation time per byte\n({measured['tokens']} tokens on "
                        f"{measured['device']}, {measured['threads']} thread(s))")
    data = {"kind": "vocab", "study": study, "arms": points, "generation": generation or {}}
    return fig, data


def _params_note(p) -> str:
    from matplotlib.ticker import EngFormatter
    eng = EngFormatter(places=0, sep="")
    if p.params is None:
        return ""
    return f"\n{eng(p.params)} params" + (f", {eng(p.embedding_params)} in the\nembedding (no FLOPs)"
                                          if p.embedding_params else "")


def _vocab_name(p) -> str:
    """`V=512` when the arm's name says no more than its vocabulary size, else `ARM (V=512)`."""
    if p.vocab_size is None:
        return p.arm
    bare = p.arm.lower().removeprefix("vocab").removeprefix("v").strip("-_=")
    return f"V={p.vocab_size}" if bare == str(p.vocab_size) else f"{p.arm} (V={p.vocab_size})"


# ---------------------------------------------------------------- all of them


def plot_study(rows, study: str, kind: str, out_dir: str | Path, metric: str = "val_bpb", baseline: str | None = None,
               formats=FORMATS, x: str = "step", band: str = "std",
               generation: dict | None = None) -> tuple[list[Path], dict[str, str]]:
    """Draws one kind (or "all": every kind the study's rows can draw) into out_dir: (files written,
    kind -> why it was not drawn, for `all`)."""
    matplotlib, _ = require_matplotlib()
    if not rows:
        raise LmgolfError(f"plot: no runs in study {study!r} (add some with `lmgolf results add RUN --study {study}`)")
    if kind != "all" and kind not in KINDS:
        raise LmgolfError(f"plot: unknown kind {kind!r} (choose from {', '.join(KINDS)}, all)")
    _metric(metric)
    pd.arm_order(rows, baseline)  # an unknown baseline arm is refused whatever the kind
    unknown = [f for f in formats if f not in FORMATS]
    if unknown or not formats:
        raise LmgolfError(f"plot: unknown format {(unknown or [''])[0]!r} (choose from {', '.join(FORMATS)})")
    written, skipped = [], {}
    with matplotlib.rc_context(STYLE):
        for k in KINDS if kind == "all" else (kind,):
            try:
                if kind == "all" and k == "vocab" and len({p.vocab_size for p in vocab_points(rows)}) < 2:
                    skipped[k] = "the arms share one vocabulary size"
                    continue
                fig, data = draw(rows, study, k, metric, baseline, x, band, generation)
            except LmgolfError as e:
                if kind != "all":
                    raise
                skipped[k] = str(e)  # `all` draws what the rows have (e.g. no metrics logs: no curves)
                continue
            written += save(fig, data, out_dir, k, formats)
    return written, skipped


def draw(rows, study, kind, metric, baseline, x, band, generation):
    if kind == "curves":
        return plot_curves(rows, study, metric, x, band, baseline)
    if kind == "params":
        return plot_against(rows, study, "params", metric, baseline)
    if kind == "flops":
        return plot_against(rows, study, "train_flops", metric, baseline, front=True)
    if kind == "ablation":
        return plot_ablation(rows, study, metric, baseline)
    return plot_vocab(rows, study, baseline, generation)
