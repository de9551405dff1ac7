"""Welch's t-test and the t-interval of a mean, with the standard library only: the t statistic, the
Welch-Satterthwaite degrees of freedom, the t quantile, and p-values from the Student t distribution
through the regularized incomplete beta function (a Lentz continued fraction, as in Numerical Recipes'
betacf). scipy is a test dependency only; the
tests check these numbers against `scipy.stats.ttest_ind(equal_var=False)`.

The golf rule (the parameter-golf challenge's bar for a new record): an arm beats the baseline when its
mean metric is lower by at least `min_delta` (0.005; in nats per token on val_loss, the default metric)
and the one-sided Welch test of "the arm is lower" gives p < `alpha` (0.01).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

from lmgolf.errors import LmgolfError

GOLF_MIN_DELTA = 0.005
GOLF_ALPHA = 0.01


def mean_std(values: Sequence[float]) -> tuple[float, float | None, int]:
    """(mean, sample standard deviation with ddof=1 or None for one value, n)."""
    n = len(values)
    if n == 0:
        raise LmgolfError("statistics: no values")
    mean = math.fsum(values) / n
    if n < 2:
        return mean, None, n
    return mean, math.sqrt(math.fsum((v - mean) ** 2 for v in values) / (n - 1)), n


def _betacf(a: float, b: float, x: float) -> float:
    """The continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, eps = 1e-300, 1e-16
    qab, qap, qam = a + b, a + 1.0, a - 1.0
    c, d = 1.0, 1.0 - qab * x / qap
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 10_000):
        m2 = 2 * m
        aa = m * (b - m) * x / ((qam + m2) * (a + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        aa = -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))
        d = 1.0 + aa * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + aa / c
        c = c if abs(c) > tiny else tiny
        delta = d * c
        h *= delta
        if abs(delta - 1.0) < eps:
            return h
    raise ArithmeticError("incomplete beta: the continued fraction did not converge")


def betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function I_x(a, b)."""
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1.0) / (a + b + 2.0):
        return front * _betacf(a, b, x) / a
    return 1.0 - front * _betacf(b, a, 1.0 - x) / b


def t_sf(t: float, df: float) -> float:
    """P(T > t) for Student's t with df degrees of freedom (df may be fractional)."""
    if math.isinf(t):
        return 0.0 if t > 0 else 1.0
    tail = 0.5 * betainc(df / 2.0, 0.5, df / (df + t * t))  # P(T > |t|)
    return tail if t > 0 else 1.0 - tail


def t_cdf(t: float, df: float) -> float:
    return t_sf(-t, df)


@dataclass
class Welch:
    t: float
    df: float
    p_two_sided: float
    p_less: float      # H1: mean(a) < mean(b)
    p_greater: float   # H1: mean(a) > mean(b)


def welch(a: Sequence[float], b: Sequence[float]) -> Welch:
    """Welch's unequal-variance t-test of a against b (scipy.stats.ttest_ind(a, b, equal_var=False))."""
    ma, sa, na = mean_std(a)
    mb, sb, nb = mean_std(b)
    if na < 2 or nb < 2:
        raise LmgolfError(f"statistics: Welch's t-test needs at least 2 values on each side (got {na} and {nb})")
    va, vb = sa * sa / na, sb * sb / nb
    se2 = va + vb
    if se2 == 0.0:
        raise LmgolfError("statistics: Welch's t-test is undefined when both samples have zero variance")
    t = (ma - mb) / math.sqrt(se2)
    df = se2 * se2 / (va * va / (na - 1) + vb * vb / (nb - 1))
    p_greater = t_sf(t, df)
    p_less = t_sf(-t, df)
    return Welch(t=t, df=df, p_two_sided=min(1.0, 2.0 * min(p_greater, p_less)), p_less=p_less, p_greater=p_greater)


def golf_rule(improvement: float, p_one_sided: float, min_delta: float = GOLF_MIN_DELTA,
              alpha: float = GOLF_ALPHA) -> bool:
    """Improvement (baseline mean - arm mean, lower is better) of at least min_delta at one-sided p < alpha."""
    return improvement >= min_delta and p_one_sided < alpha


def t_quantile(p: float, df: float) -> float:
    """The p-quantile of Student's t with df degrees of freedom (bisection on lmgolf.study.stats.t_cdf)."""
    if not 0 < p < 1 or not df > 0:
        raise LmgolfError(f"statistics: t quantile needs 0 < p < 1 and df > 0 (got p={p}, df={df})")
    if p < 0.5:
        return -t_quantile(1 - p, df)
    lo, hi = 0.0, 1.0
    while t_cdf(hi, df) < p:
        hi *= 2
    for _ in range(200):
        mid = (lo + hi) / 2
        if t_cdf(mid, df) < p:
            lo = mid
        else:
            hi = mid
        if hi - lo <= 1e-12 * max(1.0, hi):
            break
    return (lo + hi) / 2


@dataclass
class Interval:
    mean: float
    lo: float | None  # None: one value, no interval
    hi: float | None
    n: int
    std: float | None


def t_interval(values: Sequence[float], confidence: float = 0.95) -> Interval:
    """mean ± t_{(1+c)/2, n-1} · s / sqrt(n): the two-sided confidence interval of the mean over seeds."""
    mean, std, n = mean_std(list(values))
    if std is None:
        return Interval(mean, None, None, n, None)
    half = t_quantile((1 + confidence) / 2, n - 1) * std / math.sqrt(n)
    return Interval(mean, mean - half, mean + half, n, std)
