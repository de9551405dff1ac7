"""Legality as a tool: check that an evaluation mode, yours or a built-in one, is a legal compressor.

An evaluation mode is a callable `mode(model, tokens, nbytes)` that scores targets 1..n-1 of the token stream
`tokens` (n token ids; `nbytes[i]` is the UTF-8 bytes of token i) and returns each target's score: an
`EvalResult` made with `per_token=True` (every built-in mode: `evaluate(..., per_token=True)`,
`evaluate_ttt(..., per_token=True)`), any object with the same `nats` and `counts` arrays, or a pair
`(nats, counts)`. `nats[i]` is what target i + 1 is charged, -ln p, summed over every time it was scored;
`counts[i]` is how many times it was scored. Context, stride and other settings go in a closure.

`check_legality(mode, model, tokens, nbytes)` runs the mode on the stream and on altered copies of it and
checks, each property under its name:

- `deterministic`: the same stream scores the same twice (the mode leaves the model as it found it), so the
  comparisons below mean something.
- `scored_once`: every target 1..n-1 is scored exactly once (`counts` all 1, one entry per target), and an
  `EvalResult`'s totals (tokens, bytes, loss) are those of the per-target scores.
- `causal`: for each probe t, replacing every token after t (bos ids may appear or vanish) changes no score
  of a target up to t.
- `normalized`: every distribution the mode makes with `lmgolf.eval.evaluate.log_probs` (the built-in
  modes' one place where logits become scores; call it as `evaluate.log_probs`, a module attribute, to be
  seen; the check wraps it while it runs, so run one check at a time) has one entry per vocabulary value and
  sums to 1, and no target is charged a probability above 1 (negative nats) or NaN.
- `sums_to_one`: for each position j, with tokens 0..j-1 fixed, the mode is run on tokens[:j + 1] once for
  every value v of target j; the probabilities it charges, exp(-nats), add up to 1. This catches what the
  other checks cannot see: a mode that learns from a target before scoring it, a score made from the target's
  own value, or a distribution that is not normalized, wherever it comes from.

A violation names its property, the position and the numbers. All checks run; `IllegalEvaluation` (raised
unless `raise_on_violation=False`) lists every violated property, and the returned `LegalityReport` too.
Cost: 2 + len(probes) runs on the whole stream plus vocab_size runs per position on a prefix; with a tiny
model and a stream of a few dozen tokens it takes a second or two.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from lmgolf.errors import LmgolfError
from lmgolf.eval import evaluate as _evaluate

CHECKS = ("deterministic", "scored_once", "causal", "normalized", "sums_to_one")
Mode = Callable[..., object]


@dataclass
class Violation:
    property: str  # one of CHECKS
    message: str   # names the property, the position and the numbers

    def __str__(self) -> str:
        return f"{self.property}: {self.message}"


@dataclass
class LegalityReport:
    checks: tuple[str, ...]                 # the checks that ran
    violations: list[Violation] = field(default_factory=list)  # the first violation of each property
    runs: int = 0                           # calls of the mode
    distributions: int = 0                  # distributions seen through log_probs
    probes: tuple[int, ...] = ()            # causal: the t after which tokens were replaced
    positions: tuple[int, ...] = ()         # sums_to_one: the targets tried with every value
    sums: dict[int, float] = field(default_factory=dict)  # sums_to_one: position -> sum of the probabilities
    later_change: float | None = None       # causal: the smallest, over probes, largest change after t (nats)
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.violations

    @property
    def properties(self) -> set[str]:
        return {v.property for v in self.violations}

    def format(self) -> str:
        head = (f"{'legal' if self.ok else 'ILLEGAL'}: {', '.join(self.checks)} checked in {self.runs} runs "
                f"({self.seconds:.1f} s)")
        lines = [head] + [f"  {v}" for v in self.violations]
        if "normalized" in self.checks and self.distributions == 0:
            lines.append("  note: no distribution went through lmgolf.eval.evaluate.log_probs; normalization was "
                         "checked only through the scores (sums_to_one, no probability above 1)")
        if self.later_change is not None and self.later_change < 1e-4:
            lines.append(f"  note: no score after a probe changed by more than {self.later_change:.1e} nats when the "
                         "later tokens did: the causality check says little about this mode on this stream")
        return "\n".join(lines)


class IllegalEvaluation(LmgolfError):
    """An evaluation mode broke a legality property; `.report` has them all, `.properties` their names."""

    def __init__(self, report: LegalityReport):
        self.report = report
        self.properties = report.properties
        names = ", ".join(v.property for v in report.violations)
        super().__init__(f"illegal evaluation mode ({names}):\n" + "\n".join(f"  {v}" for v in report.violations))


def per_target(result) -> tuple[np.ndarray, np.ndarray]:
    """(nats, counts) of a mode's result, as float64 and int64 arrays."""
    if isinstance(result, tuple) and len(result) == 2:
        nats, counts = result
    else:
        nats, counts = getattr(result, "nats", None), getattr(result, "counts", None)
    if nats is None or counts is None:
        raise LmgolfError("check_legality: the mode must return per-target scores: an EvalResult made with "
                          "per_token=True, an object with nats and counts, or a pair (nats, counts)")
    nats = np.asarray(nats.detach().double().cpu() if torch.is_tensor(nats) else nats, dtype=np.float64)
    counts = np.asarray(counts.detach().cpu() if torch.is_tensor(counts) else counts, dtype=np.int64)
    if nats.shape != counts.shape or nats.ndim != 1:
        raise LmgolfError(f"check_legality: nats and counts must be two arrays of one entry per target, got shapes "
                          f"{nats.shape} and {counts.shape}")
    return nats, counts


def spread(count: int, low: int, high: int) -> tuple[int, ...]:
    """`count` positions spread evenly over low..high (fewer if the range is shorter)."""
    if high < low or count < 1:
        return ()
    return tuple(sorted({int(round(x)) for x in np.linspace(low, high, count + 2)[1:-1]})) if high > low else (low,)


def check_legality(mode: Mode, model, tokens, nbytes, *, vocab_size: int | None = None,
                   probes: int | Sequence[int] = 3, positions: int | Sequence[int] = 2,
                   checks: Sequence[str] = CHECKS, seed: int = 0, atol: float = 1e-6, sum_tol: float = 1e-5,
                   raise_on_violation: bool = True) -> LegalityReport:
    """Checks that `mode(model, tokens, nbytes)` is a legal evaluation mode (module docstring: the contract and
    what each check asserts). probes: the t after which tokens are replaced (causal), or how many to spread
    over the stream; positions: the targets tried with every value (sums_to_one), or how many to spread over
    the second half of the stream. atol: the largest change of an earlier score (nats) that counts as none;
    sum_tol: how far from 1 a sum of probabilities may be. Raises IllegalEvaluation on a violation unless
    raise_on_violation is False; returns the LegalityReport either way."""
    unknown = [c for c in checks if c not in CHECKS]
    if unknown:
        raise LmgolfError(f"check_legality: unknown check {unknown[0]!r}; the checks are {', '.join(CHECKS)}")
    tokens = np.asarray(tokens)
    nbytes = np.asarray(nbytes)
    n = len(tokens)
    if n < 3 or len(nbytes) != n:
        raise LmgolfError(f"check_legality: needs a stream of at least 3 tokens with one byte count each, got {n} "
                          f"tokens and {len(nbytes)} byte counts")
    vocab = int(vocab_size if vocab_size is not None else model.cfg.vocab_size)
    probes = spread(probes, 1, n - 2) if isinstance(probes, int) else tuple(int(t) for t in probes)
    positions = spread(positions, n // 2, n - 1) if isinstance(positions, int) else tuple(int(j) for j in positions)
    if any(not 1 <= t <= n - 2 for t in probes) or any(not 1 <= j <= n - 1 for j in positions):
        raise LmgolfError(f"check_legality: probes must lie in [1, {n - 2}] and positions in [1, {n - 1}]")
    report = LegalityReport(checks=tuple(c for c in CHECKS if c in checks), probes=probes, positions=positions)
    found: dict[str, Violation] = {}

    def violate(prop: str, message: str) -> None:
        if prop in report.checks and prop not in found:
            found[prop] = Violation(prop, message)

    def run(toks: np.ndarray, nb: np.ndarray) -> np.ndarray:
        report.runs += 1
        result = mode(model, toks, nb)
        nats, counts = per_target(result)
        m = len(toks) - 1
        if nats.shape != (m,):
            violate("scored_once", f"a stream of {len(toks)} tokens has {m} targets, the mode returned {len(nats)} scores")
            return np.resize(nats, m)
        bad = np.flatnonzero(counts != 1)
        if len(bad):
            j = int(bad[0])
            violate("scored_once", f"target {j + 1} (of 1..{m}) was scored {int(counts[j])} times "
                                   f"({len(bad)} targets not scored exactly once)")
        if hasattr(result, "tokens") and hasattr(result, "loss"):
            expected = int(np.asarray(nb[1:], dtype=np.int64).sum())
            if result.tokens != m or getattr(result, "bytes", expected) != expected:
                violate("scored_once", f"the result counts {result.tokens} tokens and {result.bytes} bytes, the "
                                       f"stream's targets are {m} tokens of {expected} bytes")
            elif not math.isclose(result.loss * result.tokens, float(nats.sum()), rel_tol=1e-7, abs_tol=1e-9):
                violate("scored_once", f"the result's total {result.loss * result.tokens:.6f} nats is not the sum "
                                       f"of its per-target scores, {float(nats.sum()):.6f}")
        weird = np.flatnonzero(np.isnan(nats) | (nats < -atol))
        if len(weird):
            j = int(weird[0])
            violate("normalized", f"target {j + 1} is charged {nats[j]:.6g} nats, a probability of "
                                  f"{math.exp(-nats[j]) if not np.isnan(nats[j]) else float('nan'):.6g}")
        return nats

    original = _evaluate.log_probs

    def observed(logits, temperature=None):
        out = original(logits, temperature)
        report.distributions += int(np.prod(out.shape[:-1]))
        if out.shape[-1] != vocab:
            violate("normalized", f"a distribution from log_probs has {out.shape[-1]} entries, the vocabulary "
                                  f"{vocab}")
        elif out.numel():
            total = torch.logsumexp(out.detach().double(), dim=-1).exp()
            worst = int((total - 1).abs().argmax())
            if abs(float(total.flatten()[worst]) - 1) > sum_tol:
                violate("normalized", f"a distribution from log_probs sums to {float(total.flatten()[worst]):.6f}")
        return out

    started = time.perf_counter()
    if "normalized" in report.checks:
        _evaluate.log_probs = observed
    try:
        base = run(tokens, nbytes)
        if "deterministic" in report.checks:
            again = run(tokens, nbytes)
            diff = np.abs(again - base)
            if np.nanmax(diff, initial=0) > atol:
                j = int(np.nanargmax(diff))
                violate("deterministic", f"scoring the same stream twice gave target {j + 1} {base[j]:.6f} then "
                                         f"{again[j]:.6f} nats (does the mode change the model?)")
        if "causal" in report.checks:
            changes = []
            for t in probes:
                changed = tokens.copy()
                changed[t + 1:] = np.random.default_rng(seed + t).integers(0, vocab, size=n - t - 1)
                other = run(changed, nbytes)
                diff = np.abs(other[:t] - base[:t])
                if np.nanmax(diff, initial=0) > atol:
                    j = int(np.nanargmax(diff))
                    violate("causal", f"replacing the tokens after {t} changed the score of target {j + 1} from "
                                      f"{base[j]:.6f} to {other[j]:.6f} nats")
                changes.append(float(np.nanmax(np.abs(other[t:] - base[t:]), initial=0)))
            report.later_change = min(changes) if changes else None
        if "sums_to_one" in report.checks:
            for j in positions:
                prefix, total = tokens[:j + 1].copy(), 0.0
                for v in range(vocab):
                    prefix[j] = v
                    total += math.exp(-run(prefix, nbytes[:j + 1])[j - 1])
                report.sums[j] = total
                if not abs(total - 1) <= sum_tol:
                    violate("sums_to_one", f"with tokens 0..{j - 1} fixed, the probabilities charged for the "
                                           f"{vocab} values of target {j} sum to {total:.6f}")
    finally:
        _evaluate.log_probs = original
    report.seconds = time.perf_counter() - started
    report.violations = [found[c] for c in CHECKS if c in found]
    if report.violations and raise_on_violation:
        raise IllegalEvaluation(report)
    return report
