"""Training metrics teed to TensorBoard (train.tensorboard): every numeric field the metrics log writes
also goes to event files in RUN/tensorboard/, under the tags `train/FIELD` and `val/FIELD`
(`val/FIELD/VARIANT` for a weight average's final validation). The JSONL log stays the record; this
is a view of it. tensorboard is an optional dependency (pip install 'lmgolf[tensorboard]').
"""

from __future__ import annotations

import math
from pathlib import Path

from lmgolf.errors import LmgolfError
from lmgolf.progress import MetricsLog

TENSORBOARD_DIR = "tensorboard"
SKIPPED = {"step", "time", "val_tokens"}  # the x axis, the wall clock, and a count that is not a metric


def summary_writer(log_dir: str | Path, purge_step: int | None = None):
    """A torch SummaryWriter on log_dir, or a one-line error when tensorboard is not installed."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise LmgolfError("config field train.tensorboard: needs the tensorboard package "
                          "(pip install 'lmgolf[tensorboard]')") from None
    return SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)


def scalars(record: dict) -> dict[str, float]:
    """The TensorBoard tags and values of one metrics-log record: a training step's or a validation's
    numbers (flags and lists left out; the resume and QAT markers, which carry no metric, give none)."""
    if "loss" not in record and not any(k.startswith("val_") for k in record):
        return {}
    variant = record.get("weights")
    out = {}
    for key, value in record.items():
        if key in SKIPPED or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if not math.isfinite(value):
            continue
        if key.startswith("val_"):
            tag = "val/" + key.removeprefix("val_") + (f"/{variant}" if variant and variant != "raw" else "")
        else:
            tag = "train/" + key
        out[tag] = float(value)
    return out


class TensorBoardLog(MetricsLog):
    """A MetricsLog that also writes each record's scalars to TensorBoard at the record's step.

    purge_step: on resume, the first step after the checkpoint's; TensorBoard hides what an earlier
    process logged from that step on, as the JSONL log is cut back to the checkpoint."""

    def __init__(self, path: str | Path, log_dir: str | Path, purge_step: int | None = None):
        super().__init__(path)
        self.writer = summary_writer(log_dir, purge_step)

    def write(self, **record) -> None:
        super().write(**record)
        step = record.get("step")
        if not isinstance(step, int):
            return
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()  # each record reaches the event file now (the writer's thread flushes lazily)

    def close(self) -> None:
        self.writer.close()


def metrics_log(out_dir: str | Path, enabled: bool, tensorboard: bool, resumed_step: int | None = None) -> MetricsLog:
    """The run's metrics log (RUN/metrics.jsonl; enabled: this is the process that writes it), teed to
    RUN/tensorboard/ when `tensorboard`. resumed_step: the checkpoint's step, when resuming."""
    out_dir = Path(out_dir)
    if not enabled:
        return MetricsLog(None)
    if tensorboard:
        return TensorBoardLog(out_dir / "metrics.jsonl", out_dir / TENSORBOARD_DIR,
                              purge_step=None if resumed_step is None else resumed_step + 1)
    return MetricsLog(out_dir / "metrics.jsonl")
