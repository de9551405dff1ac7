"""The results store: an embedded SQLite database with one row per run (docs/results.md).

A row holds where the run came from (study, arm, seed, config hash and overrides, code version, machine,
data fingerprint) and what it scored (val loss and bits per byte, artifact bytes, parameters, training
FLOPs, tokens, wall time, steps). Rows are keyed by the run folder's resolved path, so adding a run again
updates its row. Each run is written in one transaction; WAL mode and a busy timeout let several
processes add runs at once. The schema version is PRAGMA user_version, moved forward by MIGRATIONS.
"""

from __future__ import annotations

import hashlib
import json
import os
import sqlite3
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from lmgolf.errors import LmgolfError
from lmgolf.runfiles import read_json_object

DEFAULT_PATH = "runs/results.sqlite"
BUSY_TIMEOUT_S = 60.0

# every column of a row after the key, in order (docs/results.md describes each)
COLUMNS = ("study", "arm", "seed", "config_hash", "overrides", "code_version", "git_commit", "machine",
           "data_fingerprint", "val_loss", "val_bpb", "artifact_bytes", "params", "train_flops", "tokens",
           "wall_time", "steps", "added_at", "status", "error", "artifact_val_loss", "artifact_val_bpb")
METRICS = ("val_loss", "val_bpb", "artifact_bytes", "params", "train_flops", "tokens", "wall_time", "steps",
           "artifact_val_loss", "artifact_val_bpb")

_V1 = """
CREATE TABLE runs (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,      -- the run folder's resolved path (or any unique key for rows added directly)
    study TEXT,
    arm TEXT,
    seed INTEGER,
    config_hash TEXT,               -- sha256 of config.json's canonical JSON (sorted keys, no spaces)
    overrides TEXT,                 -- JSON list of the key=value overrides of the recorded command
    code_version TEXT,              -- JSON: run.json's code record (lmgolf version, source sha256, git)
    git_commit TEXT,
    machine TEXT,                   -- JSON: run.json's hardware record plus device, dtype, world size
    data_fingerprint TEXT,          -- sha256 of the data record without its paths
    val_loss REAL,                  -- nats per token
    val_bpb REAL,                   -- bits per byte
    artifact_bytes INTEGER,         -- size of RUN/model.lmg, when packed
    params INTEGER,
    train_flops REAL,               -- training FLOPs per token x tokens
    tokens INTEGER,
    wall_time REAL,                 -- seconds of training (summary.json's elapsed)
    steps INTEGER,
    added_at TEXT
);
CREATE INDEX runs_study_arm ON runs (study, arm);
"""

# version 2: a study's failed runs (status 'failed' and their error; rows of earlier versions read as 'ok'),
# and the packed artifact's own score on the val split
_V2 = """
ALTER TABLE runs ADD COLUMN status TEXT NOT NULL DEFAULT 'ok';   -- ok | failed
ALTER TABLE runs ADD COLUMN error TEXT;                          -- a failed run's one-line error
ALTER TABLE runs ADD COLUMN artifact_val_loss REAL;              -- RUN/model.lmg scored on the val split
ALTER TABLE runs ADD COLUMN artifact_val_bpb REAL;
"""

MIGRATIONS = {1: _V1, 2: _V2}  # version -> the SQL that brings version - 1 to it
SCHEMA_VERSION = max(MIGRATIONS)


def default_path() -> str:
    return os.environ.get("LMGOLF_RESULTS") or DEFAULT_PATH


def canonical_json(value) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def data_fingerprint(data: dict) -> str | None:
    """sha256 of the run's data record with its file paths left out (the folder may move)."""
    if not data:
        return None

    def strip(value):
        if isinstance(value, dict):
            return {k: strip(v) for k, v in value.items() if k != "path"}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return hashlib.sha256(canonical_json(strip(data)).encode()).hexdigest()


def command_overrides(command) -> list[str]:
    """The key=value overrides of a recorded command line."""
    if not isinstance(command, list):
        return []
    return [a for a in command if isinstance(a, str) and "=" in a and not a.startswith("-")]


def read_run(run_dir: str | Path) -> dict:
    """A row's fields from a finished run folder (one-line errors for a missing or unfinished one)."""
    from lmgolf.config import Config
    from lmgolf.model.count import count_config

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise LmgolfError(f"{run_dir}: not a run folder (no such folder)")
    record = read_json_object(run_dir / "run.json", "not a run folder")
    config = read_json_object(run_dir / "config.json", "the run folder has no config")
    summary = read_json_object(run_dir / "summary.json", "the run is unfinished (resume it, then add it)")
    try:
        cfg = Config.from_dict(config, source=str(run_dir / "config.json"))
        count = count_config(cfg.model)
    except LmgolfError:
        raise
    except Exception as e:  # a config the schema accepts but the model cannot build
        raise LmgolfError(f"{run_dir / 'config.json'}: cannot build its model ({type(e).__name__}: {e})") from None
    artifact = run_dir / "model.lmg"
    code = record.get("code") or {}
    machine = dict(record.get("hardware") or {})
    machine.update({k: record[k] for k in ("device", "dtype", "world_size") if k in record})
    tokens = summary.get("tokens")
    return {
        "path": str(run_dir.resolve()), "seed": getattr(cfg.train, "seed", None),
        "config_hash": hashlib.sha256(canonical_json(config).encode()).hexdigest(),
        "overrides": command_overrides(record.get("command")), "code_version": code,
        "git_commit": code.get("git_commit"), "machine": machine,
        "data_fingerprint": data_fingerprint(record.get("data")),
        "val_loss": summary.get("val_loss"), "val_bpb": summary.get("val_bpb"),
        "artifact_bytes": artifact.stat().st_size if artifact.is_file() else None,
        "params": count.params,
        "train_flops": float(count.train_flops_per_token) * tokens if isinstance(tokens, (int, float)) else None,
        "tokens": tokens, "wall_time": summary.get("elapsed"), "steps": summary.get("steps"),
    }


class Store:
    """The results database at `path` (default $LMGOLF_RESULTS, else runs/results.sqlite)."""

    def __init__(self, path: str | Path | None = None):
        self.path = Path(path if path is not None else default_path())
        if self.path.is_dir():
            raise LmgolfError(f"{self.path}: is a folder, not a results database")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")
            self.conn.execute("PRAGMA journal_mode = WAL")
            self._migrate()
        except sqlite3.DatabaseError as e:
            raise LmgolfError(f"{self.path}: not a usable results database ({e})") from None
        except OSError as e:
            raise LmgolfError(f"{self.path}: cannot open ({e.strerror or e})") from None

    def close(self) -> None:
        self.conn.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    @contextmanager
    def transaction(self):
        """One write transaction, taken up front (BEGIN IMMEDIATE) so concurrent writers queue on the lock."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @property
    def schema_version(self) -> int:
        return self.conn.execute("PRAGMA user_version").fetchone()[0]

    def _migrate(self) -> None:
        if self.schema_version == SCHEMA_VERSION:
            return
        with self.transaction() as conn:
            version = self.schema_version  # again, under the lock: another process may have migrated
            if version > SCHEMA_VERSION:
                raise LmgolfError(f"{self.path}: results schema version {version} is newer than this lmgolf's "
                                  f"({SCHEMA_VERSION}); upgrade lmgolf")
            for v in range(version + 1, SCHEMA_VERSION + 1):
                for statement in MIGRATIONS[v].split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {v}")

    def add_row(self, path: str, **fields) -> None:
        """Inserts or updates (by `path`) one row; fields are COLUMNS, JSON-encoded where they are not scalars."""
        unknown = set(fields) - set(COLUMNS)
        if unknown:
            raise LmgolfError(f"results: unknown column(s) {', '.join(sorted(unknown))}")
        values = {c: fields.get(c) for c in COLUMNS}
        values["added_at"] = values["added_at"] or datetime.now(timezone.utc).isoformat(timespec="seconds")
        values["status"] = values["status"] or "ok"
        for key in ("overrides", "code_version", "machine"):
            if values[key] is not None and not isinstance(values[key], str):
                values[key] = canonical_json(values[key])
        names = ("path",) + COLUMNS
        sql = (f"INSERT INTO runs ({', '.join(names)}) VALUES ({', '.join('?' * len(names))}) "
               f"ON CONFLICT(path) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in COLUMNS)}")
        with self.transaction() as conn:
            conn.execute(sql, (str(path), *(values[c] for c in COLUMNS)))

    def add_run(self, run_dir: str | Path, study: str | None = None, arm: str | None = None,
                seed: int | None = None) -> dict:
        """Adds (or updates) the finished run folder's row; seed defaults to the config's train.seed."""
        row = read_run(run_dir)
        row.update(study=study, arm=arm, seed=seed if seed is not None else row["seed"])
        self.add_row(**row)
        return row

    def runs(self, study: str | None = None) -> list[dict]:
        """The rows of a study (every row when study is None), JSON columns decoded, in insertion order."""
        sql, args = "SELECT * FROM runs", ()
        if study is not None:
            sql, args = sql + " WHERE study = ?", (study,)
        rows = []
        for r in self.conn.execute(sql + " ORDER BY id", args):
            row = dict(r)
            for key in ("overrides", "code_version", "machine"):
                if row[key] is not None:
                    row[key] = json.loads(row[key])
            rows.append(row)
        return rows

    def studies(self) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT study FROM runs WHERE study IS NOT NULL ORDER BY study")]
