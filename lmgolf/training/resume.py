"""The config a resumed run continues with: the checkpoint's, changed as asked or refused.

A resume may change only what leaves the saved state meaningful (docs/training.md, "Resuming"):
  the budget            train.max_steps, train.time_budget (the schedule follows the new budget)
  bookkeeping           train.log_every, eval_every, eval_tokens, checkpoint_every, tensorboard; model.exit_threshold
  how steps execute     train.device, dtype, compile, cpu_malloc, micro_batch (batch_tokens fixes the step's data)
  the packing policy    pack.*, unless train.qat is on (QAT trains against the policy's quantizer)
  what is exported      train.export_weights (it only selects what the final checkpoint's model holds)
Every other field is refused with a one-line error naming it, before anything in the run folder is
written; so is a data folder whose tokenizer fingerprint differs from the run's, and a finished run
whose budget is not raised.
"""

from __future__ import annotations

import json
from pathlib import Path

from lmgolf.config import Config, TrainConfig
from lmgolf.config.load import apply_overrides
from lmgolf.data.folder import DataFolder
from lmgolf.data.tokenizers import load_tokenizer
from lmgolf.errors import LmgolfError
from lmgolf.training.checkpoint import read_state

BUDGET = {"train.max_steps", "train.time_budget"}
BOOKKEEPING = {"train.log_every", "train.eval_every", "train.eval_tokens", "train.checkpoint_every",
               "train.tensorboard", "model.exit_threshold"}
EXECUTION = {"train.device", "train.dtype", "train.compile", "train.cpu_malloc", "train.micro_batch"}
EXPORT = {"train.export_weights"}
CHANGEABLE = BUDGET | BOOKKEEPING | EXECUTION | EXPORT

# why a field cannot change, by its first matching prefix (for the error message)
REASONS = (
    ("model.", "the saved weights belong to the model it defines"),
    ("train.seed", "it fixes the data order"),
    ("train.batch_tokens", "it fixes the data each step reads"),
    ("train.batch_schedule", "it fixes the data each step reads"),
    ("train.context_schedule", "it fixes the data each step reads"),
    ("train.curriculum", "it fixes the data order"),
    ("train.teacher", "it defines the loss the run trains with"),
    ("train.distill_", "it defines the loss the run trains with"),
    ("train.warmup", "it shapes the schedule the run follows"),
    ("train.warmdown", "it shapes the schedule the run follows"),
    ("train.min_lr_frac", "it shapes the schedule the run follows"),
    ("train.decay", "it shapes the schedule the run follows"),
    ("train.momentum_warmup_steps", "it shapes the schedule the run follows"),
    ("train.momentum_start", "it shapes the schedule the run follows"),
    ("train.qat", "it shapes the schedule the run follows"),
    ("train.ema_", "the saved weight averages were built with it"),
    ("train.swa_", "the saved weight averages were built with it"),
    ("pack.", "train.qat trains against the packing policy"),
    ("train.", "the optimizer state was built with it"),
)


def resumed_config(run_dir: str | Path, overrides: list[str] = ()) -> Config:
    """The run's checkpointed config with `key=value` overrides applied where a resume can honour them."""
    saved = read_state(run_dir)["config"]
    data = apply_overrides(json.loads(json.dumps(saved)), overrides)  # on a deep copy
    cfg = Config.from_dict(data, source=f"{run_dir}: resumed config")
    refuse_frozen_changes(saved, cfg)
    return cfg


def changed_fields(saved: dict, cfg: Config) -> dict[str, tuple]:
    """Dotted field name -> (checkpoint value, new value), for every field that differs."""
    new = json.loads(json.dumps(cfg.to_dict()))  # tuples as lists, like the saved JSON
    changes = {}
    for section in ("model", "train", "pack"):
        for name, value in new[section].items():
            old = saved.get(section, {}).get(name)
            if old != value:
                changes[f"{section}.{name}"] = (old, value)
    return changes


def refuse_frozen_changes(saved: dict, cfg: Config) -> dict[str, tuple]:
    """The changes, if a resume can honour every one of them; else a one-line error naming the first that it cannot."""
    changes = changed_fields(saved, cfg)
    for name, (old, new) in changes.items():
        if name in CHANGEABLE or (name.startswith("pack.") and not cfg.train.qat):
            continue
        reason = next(why for prefix, why in REASONS if name.startswith(prefix))
        raise LmgolfError(f"resume: config field {name} cannot change on resume (checkpoint: {json.dumps(old)}, "
                          f"asked: {json.dumps(new)}; {reason})")
    return changes


def check_resume(run_dir: str | Path, cfg: Config, data: DataFolder) -> dict[str, tuple]:
    """Refuses a resume that cannot continue the run in run_dir as cfg asks; returns the changed fields."""
    state = read_state(run_dir)
    check_tokenizer(run_dir, data)
    changes = refuse_frozen_changes(state["config"], cfg)
    spent = spent_budgets(cfg.train, state["step"], state["elapsed"])
    lowered = [budget for budget in spent if budget.split("=")[0] in changes]
    if lowered:
        raise LmgolfError(f"resume: {lowered[0]} is below what the checkpoint has already used (step {state['step']}, "
                          f"{state['elapsed']:.1f} s); ask for more")
    if spent and finished_at(run_dir) == state["step"]:
        raise LmgolfError(f"resume: the run in {run_dir} is finished at step {state['step']}, its budget "
                          f"{' and '.join(spent)} is spent; raise it (--max-steps, --time-budget) to extend the run")
    return changes


def check_tokenizer(run_dir: str | Path, data: DataFolder) -> None:
    recorded = run_fingerprint(run_dir)
    if recorded != data.fingerprint:
        raise LmgolfError(f"resume: data folder {data.path} has tokenizer fingerprint {data.fingerprint[:12]}..., "
                          f"the run in {run_dir} was trained with {recorded[:12]}...; resume on the run's data folder")


def run_fingerprint(run_dir: str | Path) -> str:
    """The tokenizer fingerprint of the data the run trained on, from its run.json (else its tokenizer/ copy)."""
    record = Path(run_dir) / "run.json"
    try:
        return json.loads(record.read_text())["data"]["tokenizer"]["fingerprint"]
    except (OSError, ValueError, KeyError, TypeError):
        pass
    return load_tokenizer(Path(run_dir) / "tokenizer").fingerprint


def spent_budgets(t: TrainConfig, step: int, elapsed: float) -> list[str]:
    """The budgets (as `field=value`) that step and elapsed seconds have used up."""
    spent = []
    if t.max_steps and step >= t.max_steps:
        spent.append(f"train.max_steps={t.max_steps}")
    if t.time_budget and elapsed >= t.time_budget:
        spent.append(f"train.time_budget={t.time_budget:g}")
    return spent


def finished_at(run_dir: str | Path) -> int | None:
    """The step summary.json records, written once the final validation is done (None: not finished)."""
    try:
        return json.loads((Path(run_dir) / "summary.json").read_text())["steps"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
