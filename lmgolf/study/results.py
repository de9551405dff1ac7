"""A study's results: per-arm mean, std and n of each metric, and each arm against a baseline arm by
Welch's t-test with the golf rule flagged (docs/results.md). Lower is better for every compared metric."""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field

from lmgolf.errors import LmgolfError
from lmgolf.study.stats import GOLF_ALPHA, GOLF_MIN_DELTA, Welch, golf_rule, mean_std, welch

TABLE_METRICS = ("val_loss", "val_bpb", "artifact_bytes", "params", "wall_time")
COMPARABLE = ("val_loss", "val_bpb", "artifact_bytes", "params", "train_flops", "tokens", "wall_time", "steps",
              "artifact_val_loss", "artifact_val_bpb")
NO_ARM = "(none)"
PER_TOKEN = ("val_loss", "artifact_val_loss")  # nats per token: comparable only between runs of one tokenizer


@dataclass
class ArmResult:
    arm: str
    n: int
    stats: dict = field(default_factory=dict)  # metric -> (mean, std or None, n) over the rows that have it
    improvement: float | None = None  # baseline mean - arm mean, on the compared metric
    test: Welch | None = None
    golf: bool | None = None
    p_margin: float | None = None  # one-sided p of "the improvement is at most min_delta" (the strict reading)
    golf_strict: bool | None = None
    failed: int = 0  # the arm's failed runs (status 'failed'), left out of n and of every statistic
    other_data: bool = False  # trained on other data than the baseline (another tokenizer): a per-token
                              # metric is not compared (no test, no golf rule)


@dataclass
class StudyResults:
    study: str
    metric: str
    baseline: str | None
    arms: list[ArmResult]
    min_delta: float = GOLF_MIN_DELTA
    alpha: float = GOLF_ALPHA

    def header(self) -> list[str]:
        cols = ["arm", "n"]
        for m in TABLE_METRICS:
            cols += [f"{m}_mean", f"{m}_std"]
        if self.baseline is not None:
            cols += ["improvement", "t", "df", "p_one_sided", "p_two_sided", "golf_rule", "p_margin", "golf_rule_strict"]
        return cols

    def records(self) -> list[list]:
        out = []
        for a in self.arms:
            row = [a.arm, a.n]
            for m in TABLE_METRICS:
                mean, std, _ = a.stats.get(m, (None, None, 0))
                row += [mean, std]
            if self.baseline is not None:
                t = a.test
                row += [a.improvement, t and t.t, t and t.df, t and t.p_less, t and t.p_two_sided, a.golf, a.p_margin,
                        a.golf_strict]
            out.append(row)
        return out

    def to_csv(self) -> str:
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(self.header())
        for row in self.records():
            writer.writerow(["" if v is None else repr(v) if isinstance(v, float) else v for v in row])
        return buf.getvalue()

    def format_markdown(self) -> str:
        def ms(arm, m, digits):
            mean, std, _ = arm.stats.get(m, (None, None, 0))
            if mean is None:
                return "-"
            return f"{mean:,.{digits}f}" + ("" if std is None else f" ± {std:,.{digits}f}")

        cols = ["arm", "n", "val_loss (nats)", "val_bpb", "artifact bytes", "params", "wall s"]
        if self.baseline is not None:
            cols += [f"Δ {self.metric} vs {self.baseline}", "t", "df", "p (one-sided)", "p (two-sided)",
                     f"golf rule (≥{self.min_delta:g}, p<{self.alpha:g})", f"p (Δ ≤ {self.min_delta:g})"]
        lines = ["| " + " | ".join(cols) + " |", "|" + "|".join(" --- " for _ in cols) + "|"]
        for a in self.arms:
            cells = [a.arm, str(a.n), ms(a, "val_loss", 4), ms(a, "val_bpb", 4), ms(a, "artifact_bytes", 0),
                     ms(a, "params", 0), ms(a, "wall_time", 1)]
            if self.baseline is not None:
                if a.arm == self.baseline:
                    cells += ["baseline", "", "", "", "", "", ""]
                elif a.other_data:
                    cells += [f"{a.improvement:+.4f}" if a.improvement is not None else "-", "-", "-", "-", "-",
                              "n/a (other data or tokenizer: compare val_bpb)", "-"]
                elif a.test is None:
                    cells += [f"{a.improvement:+.4f}" if a.improvement is not None else "-", "-", "-", "-", "-",
                              "n/a (needs n ≥ 2 and variance)", "-"]
                else:
                    cells += [f"{a.improvement:+.4f}", f"{a.test.t:.3f}", f"{a.test.df:.1f}", f"{a.test.p_less:.3g}",
                              f"{a.test.p_two_sided:.3g}", "**yes**" if a.golf else "no", f"{a.p_margin:.3g}"]
            lines.append("| " + " | ".join(cells) + " |")
        head = f"study {self.study}: {sum(a.n for a in self.arms)} runs, {len(self.arms)} arms"
        failed = [a for a in self.arms if a.failed]
        if failed:
            head += (f" ({sum(a.failed for a in failed)} failed runs left out: "
                     + ", ".join(f"{a.arm} {a.failed}" for a in failed) + ")")
        if self.baseline is not None:
            head += (f"; Δ = baseline mean - arm mean of {self.metric} (positive: the arm is better), "
                     f"Welch's t-test, one-sided p for \"the arm is lower\"")
        return head + "\n\n" + "\n".join(lines) + "\n"


def study_results(rows: list[dict], study: str, baseline: str | None = None, metric: str = "val_loss",
                  min_delta: float = GOLF_MIN_DELTA, alpha: float = GOLF_ALPHA) -> StudyResults:
    """Groups a study's rows by arm and compares every arm with the baseline arm on `metric`."""
    if metric not in COMPARABLE:
        raise LmgolfError(f"results: unknown metric {metric!r} (choose from {', '.join(COMPARABLE)})")
    if not rows:
        raise LmgolfError(f"results: no runs in study {study!r} (add some with `lmgolf results add RUN --study {study}`)")
    groups: dict[str, list[dict]] = {}
    failed: dict[str, int] = {}
    for row in rows:
        arm = row.get("arm") or NO_ARM
        if row.get("status") == "failed":
            failed[arm] = failed.get(arm, 0) + 1
            groups.setdefault(arm, [])
        else:
            groups.setdefault(arm, []).append(row)
    if baseline is not None and baseline not in groups:
        raise LmgolfError(f"results: no arm {baseline!r} in study {study!r} (arms: {', '.join(sorted(groups))})")

    def values(group, m):
        return [r[m] for r in group if r.get(m) is not None]

    def fingerprints(group):
        return {r.get("data_fingerprint") for r in group} - {None}

    order = ([baseline] if baseline is not None else []) + sorted(a for a in groups if a != baseline)
    arms = []
    for name in order:
        group = groups[name]
        arm = ArmResult(arm=name, n=len(group), failed=failed.get(name, 0))
        for m in set(TABLE_METRICS) | {metric}:
            vals = values(group, m)
            if vals:
                arm.stats[m] = mean_std(vals)
        if baseline is not None and name != baseline:
            base, mine = values(groups[baseline], metric), values(group, metric)
            arm.other_data = metric in PER_TOKEN and fingerprints(group) != fingerprints(groups[baseline])
            if base and mine and arm.other_data:
                arm.improvement = mean_std(base)[0] - mean_std(mine)[0]
            elif base and mine:
                arm.improvement = mean_std(base)[0] - mean_std(mine)[0]
                try:
                    arm.test = welch(mine, base)
                except LmgolfError:
                    arm.test = None  # too few runs or no variance: no p-value, no rule
                if arm.test is not None:
                    arm.golf = golf_rule(arm.improvement, arm.test.p_less, min_delta, alpha)
                    arm.p_margin = welch([v + min_delta for v in mine], base).p_less
                    arm.golf_strict = arm.golf and arm.p_margin < alpha
        arms.append(arm)
    return StudyResults(study=study, metric=metric, baseline=baseline, arms=arms, min_delta=min_delta, alpha=alpha)
