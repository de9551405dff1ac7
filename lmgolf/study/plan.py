"""The planner: what a parameter count, a token or compute budget, a corpus and a byte budget imply.

Pure arithmetic on published fits (docs/plan.md has the formulas, the constants and their sources):

Loss. L(N, D) = E + A / N^alpha + B / D^beta, in nats per token, N parameters, D training tokens.
  Hoffmann et al. 2022, "Training Compute-Optimal Large Language Models" (arXiv:2203.15556), eq. 10 /
  Approach 3: E=1.69, A=406.4, B=410.7, alpha=0.34, beta=0.28.
  Besiroglu, Erdil, Barnett and You 2024, "Chinchilla Scaling: A replication attempt" (Epoch AI,
  arXiv:2404.10102): their refit of the same parametric form on data reconstructed from Hoffmann's
  figure 4: E=1.8172, A=482.01, B=2085.43, alpha=0.3478, beta=0.3658.
  Both were fitted on Hoffmann's runs: 70M to 16B parameters, 5B to 500B tokens (Hoffmann's
  abstract). Outside that range the numbers are extrapolations, and `plan` says so. The losses are
  on Hoffmann's MassiveText with its tokenizer: compare differences between plans, not a loss on
  another corpus or tokenizer.

Compute. C = 6 N D (training FLOPs: forward and backward, attention ignored; `lmgolf count` has the
  exact FLOPs per token of a preset). From hardware: C = peak FLOP/s x MFU x GPUs x hours x 3600.

Repetition. Muennighoff et al. 2023, "Scaling Data-Constrained Language Models" (arXiv:2305.16264),
  eq. 5: D' = U + U R* (1 - exp(-R / R*)) with U unique tokens, R = D / U - 1 repetitions and
  R*_D = 15.39 (their fitted constant, eq. 7 and appendix). The planner puts D' in place of D in
  both fits, as their data-constrained law does (it also discounts excess parameters, R*_N = 5.31,
  which this planner leaves out: it takes the parameter count as given).

Bytes. The parameters that fit `budget` bytes at b bits each, after the code bytes (the runner file
  counted as code, lmgolf.packing.runner): (budget - code) x 8 / b. Nominal bits ignore scales and the
  header; the effective figure adds lmgolf's storages' own overhead: one fp16 scale per row for the
  int rows and fp8, one per group of 64 for ternary (whose trits pack 5 a byte: 1.6 bits), for rows
  of `row` weights. Compression (lzma, brotli) usually shrinks quantized codes further, so the real
  count can be larger: `lmgolf fit` measures it for a preset.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

from lmgolf.errors import LmgolfError


@dataclass(frozen=True)
class Fit:
    name: str
    source: str
    E: float
    A: float
    B: float
    alpha: float
    beta: float

    def loss(self, n: float, d: float) -> float:
        return self.E + self.A / n ** self.alpha + self.B / d ** self.beta

    def optimal(self, flops: float) -> tuple[float, float]:
        """The compute-optimal (N, D) for C = 6 N D: N = G (C/6)^(beta/(alpha+beta)), G = (alpha A / (beta B))^(1/(alpha+beta))."""
        g = (self.alpha * self.A / (self.beta * self.B)) ** (1 / (self.alpha + self.beta))
        n = g * (flops / 6) ** (self.beta / (self.alpha + self.beta))
        return n, flops / (6 * n)


HOFFMANN = Fit("hoffmann", "Hoffmann et al. 2022 (arXiv:2203.15556)", 1.69, 406.4, 410.7, 0.34, 0.28)
BESIROGLU = Fit("besiroglu", "Besiroglu et al. 2024 (arXiv:2404.10102)", 1.8172, 482.01, 2085.43, 0.3478, 0.3658)
FITS = (HOFFMANN, BESIROGLU)
# the runs both fits were made on (Hoffmann et al. 2022, abstract)
FIT_PARAMS = (70e6, 16e9)
FIT_TOKENS = (5e9, 500e9)

R_STAR_DATA = 15.39  # Muennighoff et al. 2023, R*_D

# dense peak FLOP/s per accelerator (vendor datasheets, no sparsity)
HARDWARE = {
    "h100-bf16": 989e12, "h100-fp8": 1979e12, "h200-bf16": 989e12, "a100-bf16": 312e12,
    "a100-tf32": 156e12, "v100-fp16": 125e12, "t4-fp16": 65e12, "l4-bf16": 121e12,
}

ROW = 512  # weights per row for the effective bits (a d_model-wide row)
TERNARY_GROUP = 64
# storage -> (nominal bits per weight, bits of stored code per weight, fp16 scales per row or None per group)
STORAGE_BITS = {
    "fp16": (16, 16, 0), "int8-row": (8, 8, 1), "int6-row": (6, 6, 1), "int5-row": (5, 5, 1),
    "int4-row": (4, 4, 1), "int3-row": (3, 3, 1), "int2-row": (2, 2, 1), "ternary": (1.58, 1.6, None),
}


def tokens_from_compute(flops: float, params: float) -> float:
    """D = C / (6 N)."""
    return flops / (6 * params)


def compute_from_hardware(peak_flops: float, mfu: float, hours: float, gpus: int = 1) -> float:
    return peak_flops * mfu * gpus * hours * 3600


def effective_tokens(tokens: float, unique: float, r_star: float = R_STAR_DATA) -> float:
    """Muennighoff et al.'s D' for `tokens` drawn from `unique` distinct tokens (repeats when tokens > unique)."""
    if tokens <= unique:
        return tokens
    r = tokens / unique - 1
    return unique + unique * r_star * (1 - math.exp(-r / r_star))


def hoffmann_loss(n: float, d: float) -> float:
    return HOFFMANN.loss(n, d)


def besiroglu_loss(n: float, d: float) -> float:
    return BESIROGLU.loss(n, d)


def effective_bits(storage: str, row: int = ROW) -> float:
    _, code, scales = STORAGE_BITS[storage]
    return code + 16 * (1 / TERNARY_GROUP if scales is None else scales / row)


def params_for_bytes(budget: int, code: int, bits: float) -> int:
    return max(0, int((budget - code) * 8 // bits))


@dataclass
class Plan:
    params: float
    tokens: float
    flops: float
    tokens_per_param: float
    losses: dict                    # fit name -> loss with the tokens as if all unique
    optimal: dict                   # fit name -> {"params", "tokens"} compute-optimal for the same FLOPs
    corpus_tokens: float | None = None
    epochs: float | None = None
    effective_tokens: float | None = None
    repeated_losses: dict | None = None  # fit name -> loss with D' in place of D
    budget_bytes: int = 16_000_000
    code_bytes: int = 0
    runner: str = "plain"
    row: int = ROW
    fits_budget: list = field(default_factory=list)  # per storage: storage, bits, params, effective_bits, effective_params
    warnings: list = field(default_factory=list)
    source: str = ""                # how the tokens were given

    def as_dict(self) -> dict:
        return asdict(self)

    def format(self) -> str:
        lines = [f"parameters        {self.params:>16,.0f}",
                 f"tokens            {self.tokens:>16,.0f}   ({self.source})",
                 f"training FLOPs    {self.flops:>16.3e}   (6 N D)",
                 f"tokens/parameter  {self.tokens_per_param:>16,.1f}"]
        if self.corpus_tokens is not None:
            lines += [f"corpus tokens     {self.corpus_tokens:>16,.0f}   epochs {self.epochs:,.2f}",
                      f"effective tokens  {self.effective_tokens:>16,.0f}   (Muennighoff et al. 2023, R* = {R_STAR_DATA})"]
        lines.append("")
        head = f"{'fit':<11}{'loss':>8}{'ppl':>9}"
        if self.repeated_losses is not None:
            head += f"{'repeated':>10}{'ppl':>9}"
        head += f"{'optimal N':>16}{'optimal D':>18}"
        lines.append(head)
        for fit in FITS:
            loss = self.losses[fit.name]
            row = f"{fit.name:<11}{loss:>8.3f}{math.exp(loss):>9.1f}"
            if self.repeated_losses is not None:
                rep = self.repeated_losses[fit.name]
                row += f"{rep:>10.3f}{math.exp(rep):>9.1f}"
            opt = self.optimal[fit.name]
            row += f"{opt['params']:>16,.0f}{opt['tokens']:>18,.0f}"
            lines.append(row)
        lines.append("(nats per token on Hoffmann's data and tokenizer; optimal: the same FLOPs split compute-optimally)")
        lines += ["", f"budget {self.budget_bytes:,} bytes - code {self.code_bytes:,} ({self.runner} runner) = "
                      f"{self.budget_bytes - self.code_bytes:,} bytes for weights",
                  f"{'storage':<10}{'bits':>6}{'parameters':>14}{'eff. bits':>11}{'eff. params':>14}"]
        for r in self.fits_budget:
            lines.append(f"{r['storage']:<10}{r['bits']:>6}{r['params']:>14,}{r['effective_bits']:>11.3f}"
                         f"{r['effective_params']:>14,}")
        lines.append(f"(effective: plus fp16 scales for rows of {self.row} weights, ternary 5 trits a byte and a scale "
                     f"per {TERNARY_GROUP}; before the header and compression)")
        lines += [f"warning: {w}" for w in self.warnings]
        return "\n".join(lines)


def _positive(value, flag: str) -> float:
    if value is None or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
        raise LmgolfError(f"plan: {flag} must be a positive finite number, got {value!r}")
    return float(value)


def plan(params: float, tokens: float | None = None, flops: float | None = None, hardware: str | None = None,
         peak_flops: float | None = None, hours: float | None = None, mfu: float = 0.4, gpus: int = 1,
         corpus_tokens: float | None = None, budget_bytes: int = 16_000_000, runner: str = "plain",
         row: int = ROW, code_bytes: int | None = None) -> Plan:
    """A Plan from exactly one token source: tokens, flops, or hardware (or peak_flops) with hours, MFU and GPUs."""
    n = _positive(params, "--params")
    given = [name for name, v in (("--tokens", tokens), ("--flops", flops),
                                  ("--hardware/--peak-flops", hardware or peak_flops)) if v is not None]
    if len(given) != 1:
        raise LmgolfError("plan: give exactly one of --tokens, --flops, or --hardware (or --peak-flops) with --hours"
                          + (f"; got {' and '.join(given)}" if given else ""))
    if tokens is not None:
        d = _positive(tokens, "--tokens")
        c = 6 * n * d
        source = "given"
    elif flops is not None:
        c = _positive(flops, "--flops")
        d = tokens_from_compute(c, n)
        source = f"{c:.3e} FLOPs / 6N"
    else:
        if hardware is not None and peak_flops is not None:
            raise LmgolfError("plan: give --hardware or --peak-flops, not both")
        if hardware is not None:
            if hardware not in HARDWARE:
                raise LmgolfError(f"plan: unknown --hardware {hardware!r}; known: {', '.join(HARDWARE)}")
            peak = HARDWARE[hardware]
        else:
            peak = _positive(peak_flops, "--peak-flops")
        if hours is None:
            raise LmgolfError("plan: --hours is required with --hardware or --peak-flops")
        h = _positive(hours, "--hours")
        m = _positive(mfu, "--mfu")
        if m > 1:
            raise LmgolfError(f"plan: --mfu is a fraction of peak in (0, 1], got {mfu}")
        if not isinstance(gpus, int) or isinstance(gpus, bool) or gpus < 1:
            raise LmgolfError(f"plan: --gpus must be a positive integer, got {gpus!r}")
        c = compute_from_hardware(peak, m, h, gpus)
        d = tokens_from_compute(c, n)
        source = f"{gpus} x {hardware or f'{peak:.3e} FLOP/s'} x {h:g} h at MFU {m:g}"
    if not isinstance(budget_bytes, int) or isinstance(budget_bytes, bool) or budget_bytes <= 0:
        raise LmgolfError(f"plan: --budget-bytes must be a positive integer, got {budget_bytes!r}")
    if not isinstance(row, int) or isinstance(row, bool) or row < 1:
        raise LmgolfError(f"plan: --row must be a positive integer, got {row!r}")
    if code_bytes is None:
        from lmgolf.packing.runner import RUNNER_KINDS, runner_bytes
        if runner not in RUNNER_KINDS:
            raise LmgolfError(f"plan: --runner must be one of {', '.join(RUNNER_KINDS)}, got {runner!r}")
        code_bytes = runner_bytes(runner)
    if code_bytes >= budget_bytes:
        raise LmgolfError(f"plan: --budget-bytes {budget_bytes:,} leaves nothing after {code_bytes:,} code bytes")

    result = Plan(params=n, tokens=d, flops=c, tokens_per_param=d / n,
                  losses={f.name: f.loss(n, d) for f in FITS},
                  optimal={f.name: dict(zip(("params", "tokens"), f.optimal(c))) for f in FITS},
                  budget_bytes=budget_bytes, code_bytes=code_bytes, runner=runner, row=row, source=source)
    if corpus_tokens is not None:
        u = _positive(corpus_tokens, "--corpus-tokens")
        result.corpus_tokens = u
        result.epochs = d / u
        result.effective_tokens = effective_tokens(d, u)
        result.repeated_losses = {f.name: f.loss(n, result.effective_tokens) for f in FITS}
        if result.epochs > 4:
            result.warnings.append(f"{result.epochs:.1f} epochs: Muennighoff et al. found up to about 4 cost little; "
                                   f"the {d:,.0f} tokens are worth {result.effective_tokens:,.0f} fresh ones "
                                   f"({result.effective_tokens / d:.0%})")
    for storage, (bits, _, _) in STORAGE_BITS.items():
        eff = effective_bits(storage, row)
        result.fits_budget.append({"storage": storage, "bits": bits,
                                   "params": params_for_bytes(budget_bytes, code_bytes, bits),
                                   "effective_bits": eff,
                                   "effective_params": params_for_bytes(budget_bytes, code_bytes, eff)})
    lo, hi = FIT_PARAMS
    if n < lo or n > hi:
        result.warnings.append(f"{n:,.0f} parameters is {'below' if n < lo else 'above'} the fits' range "
                               f"({lo / 1e6:.0f}M to {hi / 1e9:.0f}B parameters, Hoffmann et al. 2022): "
                               f"the losses are extrapolations")
    lo, hi = FIT_TOKENS
    d_fit = result.effective_tokens if result.effective_tokens is not None else d
    if d_fit < lo or d_fit > hi:
        result.warnings.append(f"{d_fit:,.0f} tokens is {'below' if d_fit < lo else 'above'} the fits' range "
                               f"({lo / 1e9:.0f}B to {hi / 1e9:.0f}B tokens, Hoffmann et al. 2022): "
                               f"the losses are extrapolations")
    return result
