"""The shape of a training step by budget fraction: the sequence length (train.context_schedule) and the
tokens per step (train.batch_schedule, batch-size warmup), and the batch plan each phase runs with.

A schedule is "VALUE@FRACTION,..." (lmgolf.config.checks.parse_phases): VALUE holds from its budget fraction
to the next one's. Lengths are tokens, at most model.context, the longest equal to it (the learned position
table's size); the tokens per step stay what the batch schedule gives, so a phase of length L runs
tokens / L sequences. Batch values are fractions of train.batch_tokens. A micro-batch keeps the tokens of
train.micro_batch full-length sequences (micro_batch x model.context / L sequences of length L), and every
phase must split into whole micro-batches on every process: checked for all phases before training starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from lmgolf.config import Config
from lmgolf.config.checks import parse_phases
from lmgolf.errors import LmgolfError


@dataclass(frozen=True)
class BatchPlan:
    micro_batch: int    # sequences per forward pass on one process
    accum_steps: int    # forward passes per optimizer step on one process
    world_size: int
    seq_len: int = 0    # tokens per sequence (0: unknown)

    @property
    def sequences(self) -> int:
        return self.micro_batch * self.accum_steps * self.world_size

    @property
    def tokens(self) -> int:
        return self.sequences * self.seq_len


def plan_batch(cfg: Config, world_size: int, seq_len: int | None = None, tokens: int | None = None) -> BatchPlan:
    """The split of `tokens` per step (train.batch_tokens) into sequences of `seq_len` (model.context)."""
    t = cfg.train
    seq_len, tokens = seq_len or cfg.model.context, tokens or t.batch_tokens
    sequences = tokens // seq_len
    if sequences < world_size or tokens % seq_len:
        raise LmgolfError(f"config field train.batch_tokens: {tokens} must be a multiple of model.context "
                          f"({seq_len}) with at least one sequence per process ({world_size})")
    micro = min(t.micro_batch * cfg.model.context // seq_len, sequences // world_size)
    if sequences % (micro * world_size):
        raise LmgolfError(f"config fields train.batch_tokens and train.micro_batch: {sequences} sequences per step "
                          f"do not split into micro-batches of {micro} on {world_size} process(es)")
    return BatchPlan(micro, sequences // (micro * world_size), world_size, seq_len)


def phase_value(phases: list[tuple[float, float]], fraction: float, default):
    """The value of the phase that budget fraction `fraction` lies in (default: no phases)."""
    value = default
    for start, phase in phases:
        if fraction >= start:
            value = phase
    return value


class StepSchedule:
    """The batch plan of every phase of the length and batch schedules, checked up front."""

    def __init__(self, cfg: Config, world_size: int):
        t, context = cfg.train, cfg.model.context
        self.lengths = parse_phases(t.context_schedule, "train.context_schedule", int)
        self.shares = parse_phases(t.batch_schedule, "train.batch_schedule")
        self.context, self.batch_tokens = context, t.batch_tokens
        if self.lengths and max(length for _, length in self.lengths) != context:
            raise LmgolfError(f"config fields train.context_schedule and model.context: the longest length of "
                              f"{t.context_schedule!r} must be model.context ({context}), the position table's size")
        self.plans = {}
        for start in sorted({f for f, _ in self.lengths + self.shares} | {0.0}):
            length, tokens = self.shape(start)
            try:
                self.plans[start] = plan_batch(cfg, world_size, length, tokens)
            except LmgolfError as e:
                if not self.varies:
                    raise
                raise LmgolfError(f"config fields train.context_schedule and train.batch_schedule: from {start:g} of "
                                  f"the budget, {tokens} tokens per step in sequences of {length}: {e}") from None

    @property
    def varies(self) -> bool:
        return bool(self.lengths or self.shares)

    def shape(self, fraction: float) -> tuple[int, int]:
        """(sequence length, tokens per step) at budget fraction `fraction`."""
        share = phase_value(self.shares, fraction, 1.0)
        return phase_value(self.lengths, fraction, self.context), round(share * self.batch_tokens)

    def plan_at(self, fraction: float) -> BatchPlan:
        return phase_value(sorted(self.plans.items()), fraction, self.plans[0.0])

    def plans_from(self, fraction: float) -> list[BatchPlan]:
        """The distinct plans a run at `fraction` has still to use (for compiling every shape up front)."""
        ahead = [plan for start, plan in sorted(self.plans.items()) if start > fraction]
        return list(dict.fromkeys([self.plan_at(fraction), *ahead]))
