"""`lmgolf rerun RUN --out NEW`: a finished run repeated from its record, and whether the result matches.

The rerun trains RUN's config.json (its seed included) on the data folder its run.json names (or
`data`), refused in one line when that folder's data fingerprint (tokenizer, corpus and split counts,
lmgolf.study.store.data_fingerprint) differs from the recorded one. A study run's result.json also
brings its packing and artifact score, which are repeated too. On the same machine, code and thread
count, a step budget gives the same run: the losses match exactly. A time budget stops after however
many steps fit, so its rerun can differ; so can another machine's, or another code version's.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from lmgolf.errors import LmgolfError
from lmgolf.runfiles import read_json_object

COMPARED = ("val_loss", "val_bpb", "steps", "artifact_bytes", "artifact_val_loss", "artifact_val_bpb")


@dataclass
class RerunReport:
    original: Path
    rerun: Path
    seed: int
    tolerance: float
    rows: list[tuple[str, object, object]] = field(default_factory=list)  # (metric, original, rerun)
    notes: list[str] = field(default_factory=list)

    @property
    def matches(self) -> bool:
        return all(_close(a, b, self.tolerance) for _, a, b in self.rows)

    def format(self) -> str:
        lines = [f"rerun of {self.original} -> {self.rerun} (seed {self.seed})"]
        for name, a, b in self.rows:
            diff = "" if not isinstance(a, float) else f"  diff {b - a:+.3g}"
            lines.append(f"  {name:<18} original {a!r:<22} rerun {b!r:<22}{diff}"
                         f"{'' if _close(a, b, self.tolerance) else '  DIFFERS'}")
        lines += [f"  note: {n}" for n in self.notes]
        how = "exactly" if self.tolerance == 0 else f"within {self.tolerance:g}"
        lines.append(f"result: {'matches' if self.matches else 'does NOT match'} ({how})")
        return "\n".join(lines)


def _close(a, b, tolerance: float) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return abs(a - b) <= tolerance
    return a == b


def rerun(run_dir: str | Path, out: str | Path, data: str | Path | None = None, tolerance: float = 0.0,
          progress: bool = True) -> RerunReport:
    from lmgolf.config import Config
    from lmgolf.data.folder import DataFolder
    from lmgolf.study.store import data_fingerprint, read_run
    from lmgolf.training.trainer import train
    run_dir, out = Path(run_dir), Path(out)
    if tolerance < 0:
        raise LmgolfError(f"rerun --tolerance: must be at least 0, got {tolerance}")
    if out.resolve() == run_dir.resolve():
        raise LmgolfError(f"rerun: --out {out} is the run itself; give a new folder")
    original = read_run(run_dir)  # one-line errors for a missing or unfinished run
    record = read_json_object(run_dir / "run.json", "not a run folder")
    config = read_json_object(run_dir / "config.json", "the run folder has no config")
    cfg = Config.from_dict(config, source=str(run_dir / "config.json"))
    data = data if data is not None else (record.get("data") or {}).get("path")
    if data is None:
        raise LmgolfError(f"{run_dir / 'run.json'}: no data folder recorded; give --data")
    folder = DataFolder(data)
    recorded, found = original["data_fingerprint"], data_fingerprint(folder.describe())
    if recorded != found:
        raise LmgolfError(f"rerun: data folder {data} has data fingerprint {found[:12]}..., {run_dir} was trained on "
                          f"{(recorded or 'none')[:12]}...; rerun on the same data")
    result = _study_result(run_dir)
    train(cfg, data, out, progress=progress)
    metrics = read_run(out)
    before = dict(original)
    if result is not None and result.get("pack"):
        from lmgolf.study.execute import pack_and_score
        from lmgolf.study.studyfile import PackSpec
        metrics.update(pack_and_score(out, PackSpec(**result["pack"]), Path(data)))
        before.update({k: v for k, v in (result.get("metrics") or {}).items() if k.startswith("artifact_")})
    report = RerunReport(run_dir, out, cfg.train.seed, tolerance)
    for name in COMPARED:
        if before.get(name) is not None or metrics.get(name) is not None:
            report.rows.append((name, before.get(name), metrics.get(name)))
    if metrics["config_hash"] != original["config_hash"]:
        report.notes.append("the rerun's config.json differs from the original's")
    if cfg.train.time_budget:
        report.notes.append(f"a time budget ({cfg.train.time_budget:g} s): the steps reached depend on the machine's "
                            f"speed, so the rerun need not match")
    if metrics["code_version"].get("source_sha256") != original["code_version"].get("source_sha256"):
        report.notes.append("the code differs from the original run's (source sha256 in run.json)")
    if metrics["machine"] != original["machine"]:
        report.notes.append("the machine record differs from the original run's (run.json hardware)")
    return report


def _study_result(run_dir: Path) -> dict | None:
    path = run_dir / "result.json"
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None
