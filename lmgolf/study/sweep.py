"""`lmgolf sweep STUDY`: every run of a study file (lmgolf.study.studyfile), each an ordinary run folder
OUT/ARM/seed-N with its result record (lmgolf.study.execute), added to the results store as it finishes.

Runs execute seed by seed (every arm's first seed, then every arm's second, ...; the sort is stable), so
under a time budget a machine that speeds up or slows down during the sweep reaches every arm alike instead
of the arms that happen to run last; --only numbers stay arm by arm (Study.runs). Finished runs are skipped,
an interrupted one resumes from its checkpoint, a failed one is left as recorded unless retry_failed.
jobs > 1 runs that many at a time, each a `python -m lmgolf sweep STUDY --only INDEX` process (its output
in OUT/logs/); the operating system schedules them.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from lmgolf.errors import LmgolfError
from lmgolf.study.execute import (DONE, FAILED, execute, read_result, result_record, run_command,
                                  run_state, store_row, write_result)
from lmgolf.study.studyfile import RunSpec, Study, load_study

__all__ = ["load_study", "sweep", "run_one", "collect", "list_runs", "ensure_data", "SweepReport"]
POLL_S = 0.2


@dataclass
class SweepReport:
    total: int
    ok: int = 0
    failed: list[tuple[RunSpec, str]] = field(default_factory=list)  # (run, error), this sweep's and earlier ones
    executed: int = 0
    skipped: int = 0


def log_path(study: Study, run: RunSpec) -> Path:
    return study.out / "logs" / run.arm / f"seed-{run.seed}.log"


def ensure_data(study: Study) -> None:
    """Prepares the study's data folder from its corpus and tokenizer when it is missing."""
    from lmgolf.data.prepare import is_data_folder, prepare_data
    spec = study.data
    if is_data_folder(spec.path):
        return
    if spec.corpus is None:
        raise LmgolfError(f"{study.path}: field data.path: {spec.path} is not a data folder (prepare it with "
                          f"`lmgolf data prepare`, or give data.corpus and data.tokenizer to have it prepared)")
    print(f"preparing {spec.path} from {spec.corpus} ({spec.tokenizer})", flush=True)
    try:
        prepare_data(spec.corpus, spec.tokenizer, spec.path, vocab_size=spec.vocab_size, data_dir=spec.data_dir,
                     val_fraction=spec.val_fraction, seed=spec.seed, progress=False)
    except LmgolfError:
        if not is_data_folder(spec.path):  # else another process (a scheduler's job) prepared it first
            raise


def list_runs(study: Study) -> list[str]:
    """One line per run: index, state, arm, seed, folder and the command that executes it."""
    lines = []
    for run in study.runs():
        state = run_state(run)
        line = f"{run.index:>4}  {state:<7} {run.arm:<20} seed {run.seed:<4} {run.folder}  {' '.join(run_command(study, run))}"
        if state == FAILED:
            line += f"  # {read_result(run.folder).get('error')}"
        lines.append(line)
    return lines


def run_one(study: Study, index: int, retry_failed: bool = False, say: Callable[[str], None] = print) -> dict | None:
    """Executes run number `index` (a scheduler's job) and writes only its result record; None if skipped."""
    runs = study.runs()
    if not 0 <= index < len(runs):
        raise LmgolfError(f"sweep --only: no run {index} in {study.path} (it has runs 0 to {len(runs) - 1})")
    run = runs[index]
    state = run_state(run)
    if state == DONE or (state == FAILED and not retry_failed):
        say(f"run {index} ({run.arm} seed {run.seed}) is already {state}: {run.folder / 'result.json'}")
        return None
    ensure_data(study)
    record = execute(study, run)
    if record is not None:
        say(describe(run, record, study.metrics))
    return record


def sweep(study: Study, jobs: int = 1, retry_failed: bool = False, db: str | Path | None = None,
          say: Callable[[str], None] = print) -> SweepReport:
    """Runs every run of the study that is not finished, `jobs` at a time, adding each to the store."""
    from lmgolf.study.store import Store
    if jobs < 1:
        raise LmgolfError(f"sweep --jobs: must be at least 1, got {jobs}")
    runs = study.runs()
    states = {run.index: run_state(run) for run in runs}
    todo = [r for r in runs if states[r.index] not in (DONE, FAILED) or (states[r.index] == FAILED and retry_failed)]
    todo.sort(key=lambda r: study.seeds.index(r.seed))  # seed by seed: a machine that drifts reaches every arm alike
    report = SweepReport(total=len(runs))
    counts = {s: sum(1 for v in states.values() if v == s) for s in set(states.values())}
    say(f"study {study.name}: {len(runs)} runs ({len(study.arms)} arms x {len(study.seeds)} seeds) in {study.out}; "
        + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) + (f"; running {len(todo)}" if todo else "")
        + (f", {jobs} at a time" if jobs > 1 and todo else ""))
    if todo:
        ensure_data(study)
    with Store(db) as store:
        for run in runs:
            if run not in todo:
                record = read_result(run.folder)
                report.skipped += 1
                if record.get("overrides") != run.overrides:
                    say(f"warning: {run.folder} was run with other overrides than {study.path} now gives its arm "
                        f"{run.arm}; kept as recorded (remove the folder to run it again)")
                _tally(report, run, record)
                store.add_row(**store_row(record, run.folder))
        clock = _Progress(len(runs), len(todo), study.metrics, say)
        clock.done = report.skipped
        for run, record in _execute_all(study, todo, jobs):
            report.executed += 1
            _tally(report, run, record)
            store.add_row(**store_row(record, run.folder))
            clock.finished(run, record)
    failed = f", {len(report.failed)} failed" if report.failed else ""
    say(f"study {study.name}: {report.ok} of {report.total} runs ok{failed} -> {Path(store.path)}"
        + f" (lmgolf results {study.name}" + (f" --baseline {study.baseline}" if study.baseline else "")
        + (f" --db {db}" if db is not None else "") + ")")
    for run, error in report.failed:
        say(f"  failed: {run.arm} seed {run.seed} ({run.folder}): {error}")
    if report.failed and not retry_failed:
        say("  (failed runs stay as recorded; --retry-failed runs them again, resuming from a checkpoint if any)")
    return report


def collect(study: Study, db: str | Path | None = None, say: Callable[[str], None] = print) -> SweepReport:
    """Adds every run's result record (written wherever the run executed) to the store."""
    from lmgolf.study.store import Store
    runs = study.runs()
    report, missing = SweepReport(total=len(runs)), []
    with Store(db) as store:
        for run in runs:
            record = read_result(run.folder)
            if record is None:
                missing.append(run)
                continue
            _tally(report, run, record)
            store.add_row(**store_row(record, run.folder))
        path = store.path
    say(f"collected {report.ok + len(report.failed)} of {len(runs)} runs of {study.name} ({report.ok} ok, "
        f"{len(report.failed)} failed) -> {path}" + (f"; {len(missing)} have no result yet: "
                                                       + ", ".join(str(r.index) for r in missing) if missing else ""))
    return report


def describe(run: RunSpec, record: dict, metrics: list[str] = ("val_loss", "val_bpb")) -> str:
    """A run's line: ok with the study's metrics, or FAILED with its error."""
    if record["status"] != "ok":
        return f"{run.arm} seed {run.seed}: FAILED: {record.get('error')}"
    values = record.get("metrics", {})
    shown = [f"{m} {_number(values[m])}" for m in metrics if values.get(m) is not None]
    return f"{run.arm} seed {run.seed}: ok" + (", " + ", ".join(shown) if shown else "")


def _number(value) -> str:
    return f"{value:,}" if isinstance(value, int) else f"{value:.4f}" if abs(value) < 1e4 else f"{value:.4g}"


def _tally(report: SweepReport, run: RunSpec, record: dict) -> None:
    if record["status"] == "ok":
        report.ok += 1
    else:
        report.failed.append((run, record.get("error")))


class _Progress:
    """Runs done out of the total, and the time left from the mean wall time of the runs this sweep executed."""

    def __init__(self, total: int, todo: int, metrics: list[str], say):
        self.total, self.left, self.metrics, self.say = total, todo, metrics, say
        self.done, self.executed, self.started = 0, 0, time.monotonic()

    def finished(self, run: RunSpec, record: dict) -> None:
        self.done += 1
        self.executed += 1
        self.left -= 1
        # wall time per finished run already counts the parallelism: runs finish `jobs` at a time
        eta = f", ETA {_duration((time.monotonic() - self.started) / self.executed * self.left)}" if self.left else ""
        self.say(f"[{self.done}/{self.total}] {describe(run, record, self.metrics)} ({_duration(record.get('seconds') or 0)}{eta})")


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


def _execute_all(study: Study, runs: list[RunSpec], jobs: int):
    """Yields (run, record) as each run finishes: in this process when jobs == 1, else as child processes."""
    if jobs == 1:
        for run in runs:
            yield run, execute(study, run, log=log_path(study, run))
        return
    pending, active = list(runs), {}
    env = dict(os.environ)
    package_root = str(Path(__file__).resolve().parents[2])  # the children run this very lmgolf
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("OMP_NUM_THREADS", str(max(1, (os.cpu_count() or 1) // jobs)))  # share the cores, not oversubscribe
    try:
        while pending or active:
            while pending and len(active) < jobs:
                run = pending.pop(0)
                log = log_path(study, run)
                log.parent.mkdir(parents=True, exist_ok=True)
                with open(log, "a", encoding="utf-8") as f:
                    cmd = [sys.executable, "-m", "lmgolf", "sweep", str(study.path), "--only", str(run.index),
                           "--retry-failed"]
                    active[subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)] = (run, log)
            time.sleep(POLL_S)
            for proc in [p for p in active if p.poll() is not None]:
                run, log = active.pop(proc)
                yield run, _child_record(study, run, proc.returncode, log)
    finally:
        for proc in active:  # interrupted: the children stop too, their checkpoints are kept for a resume
            proc.terminate()
        for proc in active:
            proc.wait()


def _child_record(study: Study, run: RunSpec, returncode: int, log: Path) -> dict:
    """The record a child process wrote, or a failed one when it died without writing one."""
    record = read_result(run.folder)
    if record is not None:
        return record
    tail = ""
    try:
        lines = [line for line in log.read_text(errors="replace").splitlines() if line.strip()]
        tail = f": {lines[-1].strip()}" if lines else ""
    except OSError:
        pass
    record = result_record(study, run, "failed", error=f"the run's process exited with code {returncode} without "
                                                        f"a result (log {log}){tail}")
    write_result(run.folder, record)
    return record

