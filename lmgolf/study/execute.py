"""One run of a study: train it (or resume it from its checkpoint, or finish what follows training), pack
and score the artifact when the study asks, and write the run's result record, RUN/result.json.

A run that raises (a config the schema refuses, a crash, a non-finite loss) is recorded as failed with
its error, in result.json like a finished one; only an interruption (KeyboardInterrupt) propagates.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import time
from datetime import datetime, timezone
from pathlib import Path

from lmgolf.errors import LmgolfError
from lmgolf.runfiles import atomic_write_text
from lmgolf.study.studyfile import PackSpec, RunSpec, Study

RESULT = "result.json"
RESULT_FORMAT = 1
# what a run's folder says about it (run_state)
DONE, FAILED, FINISH, RESUME, NEW = "done", "failed", "finish", "resume", "new"


def read_result(folder: Path) -> dict | None:
    """The run's result record, or None when there is none (a corrupt one counts as none: the run is redone)."""
    try:
        record = json.loads((Path(folder) / RESULT).read_text())
    except (OSError, ValueError):
        return None
    return record if isinstance(record, dict) and record.get("status") in ("ok", "failed") else None


def run_state(run: RunSpec) -> str:
    """done / failed (a result record), finish (trained, the record not written yet), resume (a checkpoint), new."""
    from lmgolf.training.checkpoint import has_checkpoint
    record = read_result(run.folder)
    if record is not None:
        return DONE if record["status"] == "ok" else FAILED
    if (run.folder / "summary.json").is_file():
        return FINISH
    if has_checkpoint(run.folder):
        return RESUME
    return NEW


def run_command(study: Study, run: RunSpec) -> list[str]:
    """The command that executes this one run anywhere (by hand, a scheduler's job, under torchrun)."""
    return ["lmgolf", "sweep", str(study.path), "--only", str(run.index)]


def execute(study: Study, run: RunSpec, log: Path | None = None) -> dict | None:
    """Executes the run and writes its result record (returned; None on a non-zero torchrun rank).
    The run's own output goes to `log` when given."""
    started = time.time()
    run.folder.mkdir(parents=True, exist_ok=True)
    (run.folder / RESULT).unlink(missing_ok=True)  # a retry: the trainer accepts only run files in the folder
    with _output_to(log):
        try:
            metrics = _train_pack_score(study, run)
            if metrics is None:
                return None
            record = result_record(study, run, "ok", metrics=metrics, seconds=time.time() - started)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # recorded, not raised: the sweep goes on with the next run
            record = result_record(study, run, "failed", error=error_line(e), seconds=time.time() - started)
            if not isinstance(e, LmgolfError):  # a crash: its traceback goes to the run's output (its log)
                import traceback
                traceback.print_exc()
    write_result(run.folder, record)
    return record


def error_line(e: BaseException) -> str:
    text = " ".join(str(e).split())
    return text if isinstance(e, LmgolfError) else f"{type(e).__name__}: {text}"


def result_record(study: Study, run: RunSpec, status: str, metrics: dict | None = None, error: str | None = None,
                  seconds: float | None = None) -> dict:
    return {"format": RESULT_FORMAT, "status": status, "study": study.name, "arm": run.arm, "seed": run.seed,
            "index": run.index, "study_file": str(study.path), "preset": study.preset, "overrides": run.overrides,
            "data": str(study.data.path), "pack": study.pack.as_dict() if study.pack else None,
            "metrics": metrics or {}, "error": error, "seconds": seconds, "pid": os.getpid(),
            "finished_at": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def write_result(folder: Path, record: dict) -> None:
    atomic_write_text(Path(folder) / RESULT, json.dumps(record, indent=2) + "\n")


@contextlib.contextmanager
def _output_to(log: Path | None):
    if log is None:
        yield
        return
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f), contextlib.redirect_stderr(f):
        yield


def _train_pack_score(study: Study, run: RunSpec) -> dict | None:
    from lmgolf.config import load_config
    from lmgolf.study.store import read_run
    from lmgolf.training.resume import resumed_config
    from lmgolf.training.trainer import train
    state = run_state(run)
    if state != FINISH:
        resume = state == RESUME
        cfg = resumed_config(run.folder, run.overrides) if resume else load_config(study.preset, run.overrides)
        print(f"{'resuming' if resume else 'training'} {study.name} {run.arm} seed {run.seed}: "
              f"{' '.join(run.overrides)}", flush=True)
        train(cfg, study.data.path, run.folder, resume=resume, progress=False)
    if int(os.environ.get("RANK", 0)) != 0:
        return None
    summary = json.loads((run.folder / "summary.json").read_text())
    if not math.isfinite(summary.get("val_loss", math.nan)):
        raise LmgolfError(f"diverged: the final val_loss is {summary.get('val_loss')}")
    metrics = {}
    if study.pack is not None:
        metrics.update(pack_and_score(run.folder, study.pack, study.data.path))
    row = read_run(run.folder)
    metrics.update({k: row[k] for k in ("val_loss", "val_bpb", "artifact_bytes", "params", "train_flops", "tokens",
                                        "wall_time", "steps")})
    metrics.update(config_hash=row["config_hash"], data_fingerprint=row["data_fingerprint"])
    return metrics


def pack_and_score(folder: Path, spec: PackSpec, data: Path) -> dict:
    """Packs RUN/model.lmg as the study's pack table says and scores the artifact on the val split."""
    from lmgolf.config import pack_policy
    from lmgolf.data.folder import DataFolder
    from lmgolf.packing.writer import pack
    from lmgolf.training.loading import load_trained
    trained = load_trained(folder)
    model, cfg = trained.model, trained.cfg
    policy = pack_policy(cfg.pack, spec.policy, spec.overrides + ([f"codec={spec.codec}"] if spec.codec else []))
    data = DataFolder(data)
    train_tokens = data.train_tokens() if policy.gptq and policy.gptq_calibration == "train" else None
    report = pack(model, cfg, trained.tokenizer, folder / "model.lmg", policy, budget=spec.budget,
                  allow_over_budget=True, train_tokens=train_tokens)
    out = {"artifact_bytes": report.artifact_bytes, "code_bytes": report.code_bytes, "fits_budget": report.fits()}
    if spec.evaluate:
        from lmgolf.eval.evaluate import evaluate
        packed = load_trained(folder / "model.lmg")
        model, cfg = packed.model, packed.cfg
        tokens, nbytes = data.split_tokens_and_bytes("val")
        result = evaluate(model, tokens, nbytes, cfg.model.context, progress=False)
        out.update(artifact_val_loss=result.loss, artifact_val_bpb=result.bpb)
    return out


def store_row(record: dict, folder: Path) -> dict:
    """The results-store row of a result record (a failed run's row has its error and no metrics)."""
    row = {"path": str(Path(folder).resolve()), "study": record.get("study"), "arm": record.get("arm"),
           "seed": record.get("seed"), "overrides": record.get("overrides"), "status": record["status"],
           "error": record.get("error")}
    if record["status"] == "ok":
        from lmgolf.study.store import read_run
        run = read_run(folder)
        run.update({k: v for k, v in row.items() if v is not None or k == "error"})
        metrics = record.get("metrics") or {}
        run.update(artifact_val_loss=metrics.get("artifact_val_loss"), artifact_val_bpb=metrics.get("artifact_val_bpb"))
        return run
    config = Path(folder) / "config.json"
    if config.is_file():
        row["config_hash"] = _config_hash(config)
    return row


def _config_hash(path: Path) -> str | None:
    from lmgolf.study.store import canonical_json
    try:
        return hashlib.sha256(canonical_json(json.loads(path.read_text())).encode()).hexdigest()
    except (OSError, ValueError):
        return None
