"""`lmgolf sweep` (docs/studies.md): study files checked field by field, an interrupted sweep resumes and
skips finished runs, failed arms are recorded and the sweep completes, --jobs runs child processes,
--only/--collect for runs made elsewhere, results in the store (schema 2, migrated from 1)."""

import json
import os
import sqlite3

import pytest

from conftest import TINY_RUN, assert_one_line_error, cli
from lmgolf.errors import LmgolfError
from lmgolf.study.studyfile import load_study
from lmgolf.study.store import MIGRATIONS, SCHEMA_VERSION, Store

pytestmark = pytest.mark.usefixtures("one_thread")
STEPS = 3


def write_study(tmp_path, data, arms='base = []', seeds="[0, 1]", extra="", name="s"):
    overrides = json.dumps(TINY_RUN + ["train.checkpoint_every=1"])
    path = tmp_path / f"{name}.toml"
    path.write_text(f'preset = "cpu-demo"\nout = "{tmp_path / "runs"}"\nseeds = {seeds}\noverrides = {overrides}\n'
                    f'{extra}\n[data]\npath = "{data}"\n[budget]\nmax_steps = {STEPS}\n[arms]\n{arms}\n')
    return path


def metrics_lines(folder):
    return [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines()]


def test_an_interrupted_sweep_resumes_and_skips_finished_runs(tmp_path, byte_data, capsys, monkeypatch):
    from lmgolf.training import trainer
    real_train = trainer.train
    path, db = write_study(tmp_path, byte_data), tmp_path / "r.sqlite"
    study = load_study(path)
    first, second = study.runs()
    assert (first.folder, second.folder) == (tmp_path / "runs/base/seed-0", tmp_path / "runs/base/seed-1")
    # run 0 executed by hand (a scheduler's job): its record only, nothing in the store yet
    code, out, err = cli(capsys, "sweep", path, "--only", 0, "--db", db)
    assert code == 0, err
    assert json.loads((first.folder / "result.json").read_text())["status"] == "ok" and not db.exists()
    done_at = (first.folder / "result.json").stat().st_mtime_ns

    def interrupted_train(cfg, data, out, **kw):  # Ctrl-C right after step 2 of 3 (its checkpoint written)
        def stop(step):
            if step == 2:
                raise KeyboardInterrupt
        return real_train(cfg, data, out, on_step=stop, **kw)

    monkeypatch.setattr(trainer, "train", interrupted_train)
    code, out, err = cli(capsys, "sweep", path, "--db", db)
    assert code == 130 and "1 done, 1 new; running 1" in out and "interrupted" in err
    assert not (second.folder / "result.json").exists() and (second.folder / "checkpoint").is_dir()
    monkeypatch.setattr(trainer, "train", real_train)
    code, out, err = cli(capsys, "sweep", path, "--list")
    assert code == 0 and " done " in out.splitlines()[0] and " resume " in out.splitlines()[1]
    assert "--only 1" in out.splitlines()[1]
    code, out, err = cli(capsys, "sweep", path, "--db", db)
    assert code == 0, err
    assert "1 done, 1 resume" in out and "[2/2] base seed 1: ok" in out
    assert (first.folder / "result.json").stat().st_mtime_ns == done_at  # skipped, not redone
    lines = metrics_lines(second.folder)
    assert any(line.get("resumed") and line["step"] == 2 for line in lines)  # continued from step 2
    assert "resuming" in (tmp_path / "runs/logs/base/seed-1.log").read_text()
    record = json.loads((second.folder / "result.json").read_text())
    assert record["metrics"]["steps"] == STEPS and record["seed"] == 1 and "train.seed=1" in record["overrides"]
    with Store(db) as store:
        rows = store.runs(study.name)
    assert sorted((r["arm"], r["seed"], r["status"]) for r in rows) == [("base", 0, "ok"), ("base", 1, "ok")]
    assert rows[-1]["val_loss"] == record["metrics"]["val_loss"] and rows[-1]["steps"] == STEPS
    # a second sweep runs nothing
    code, out, err = cli(capsys, "sweep", path, "--db", db)
    assert code == 0 and "2 done" in out and "running" not in out


def test_a_failing_arm_is_recorded_and_the_sweep_completes(tmp_path, byte_data, capsys, monkeypatch):
    from lmgolf.training import trainer
    real_train = trainer.train

    def crashing_train(cfg, data, out, **kw):
        if "crash" in str(out):
            raise RuntimeError("boom in the middle of training")
        summary = real_train(cfg, data, out, **kw)
        if "diverge" in str(out):  # a run whose final validation is not finite
            summary["val_loss"] = float("nan")
            (out / "summary.json").write_text(json.dumps(summary))
        return summary

    monkeypatch.setattr(trainer, "train", crashing_train)
    arms = 'base = []\nbad = ["model.n_head=3"]\ncrash = ["model.d_model=64"]\ndiverge = []'
    path, db = write_study(tmp_path, byte_data, arms=arms, seeds="[0]", extra='baseline = "base"'), tmp_path / "r.sqlite"
    code, out, err = cli(capsys, "sweep", path, "--db", db)
    assert code == 1  # some runs failed; every run was tried
    assert "[4/4]" in out and "1 of 4 runs ok, 3 failed" in out
    diverged = json.loads((tmp_path / "runs/diverge/seed-0/result.json").read_text())
    assert diverged["status"] == "failed" and diverged["error"] == "diverged: the final val_loss is nan"
    bad = json.loads((tmp_path / "runs/bad/seed-0/result.json").read_text())
    assert bad["status"] == "failed" and "model.n_head" in bad["error"] and "not divisible" in bad["error"]
    crash = json.loads((tmp_path / "runs/crash/seed-0/result.json").read_text())
    assert crash["error"] == "RuntimeError: boom in the middle of training"
    assert "Traceback" in (tmp_path / "runs/logs/crash/seed-0.log").read_text()
    with Store(db) as store:
        rows = {r["arm"]: r for r in store.runs("s")}
    assert rows["base"]["status"] == "ok" and rows["bad"]["status"] == "failed" and rows["bad"]["val_loss"] is None
    assert rows["crash"]["error"] == crash["error"]
    code, out, err = cli(capsys, "results", "s", "--db", db)
    assert code == 0 and "3 failed runs left out" in out and "| base | 1 |" in out and "| bad | 0 |" in out
    # failed runs stay as recorded, unless asked
    code, out, err = cli(capsys, "sweep", path, "--db", db)
    assert code == 1 and "3 failed" in out and "running" not in out
    monkeypatch.setattr(trainer, "train", real_train)
    code, out, err = cli(capsys, "sweep", path, "--db", db, "--retry-failed")
    assert code == 1 and "running 3" in out and "crash seed 0: ok" in out and "bad seed 0: FAILED" in out
    assert "diverge seed 0: FAILED: diverged" in out  # its summary is still not finite


def test_runs_execute_seed_by_seed_and_their_only_numbers_stay_arm_by_arm(tmp_path, byte_data, capsys, monkeypatch):
    from lmgolf.training import trainer
    real_train, order = trainer.train, []

    def recording_train(cfg, data, out, **kw):
        order.append(f"{out.parent.name}/{out.name}")
        return real_train(cfg, data, out, **kw)
    monkeypatch.setattr(trainer, "train", recording_train)
    path = write_study(tmp_path, byte_data, arms='a = []\nb = ["train.matrix_lr=0.01"]')
    code, out, err = cli(capsys, "sweep", path, "--list")
    assert [line.split()[:5] for line in out.splitlines()[:4]] == [
        ["0", "new", "a", "seed", "0"], ["1", "new", "a", "seed", "1"], ["2", "new", "b", "seed", "0"], ["3", "new", "b", "seed", "1"]]
    code, out, err = cli(capsys, "sweep", path, "--db", tmp_path / "r.sqlite")
    assert code == 0, err
    assert order == ["a/seed-0", "b/seed-0", "a/seed-1", "b/seed-1"]


def test_jobs_2_runs_child_processes_and_collect_adds_their_records(tmp_path, byte_data, capsys):
    path, db = write_study(tmp_path, byte_data), tmp_path / "r.sqlite"
    code, out, err = cli(capsys, "sweep", path, "--jobs", 2, "--db", db)
    assert code == 0, err + out
    assert "2 at a time" in out and "[2/2]" in out
    records = [json.loads((tmp_path / f"runs/base/seed-{s}/result.json").read_text()) for s in (0, 1)]
    pids = {r["pid"] for r in records}
    assert len(pids) == 2 and os.getpid() not in pids
    assert all("training" in (tmp_path / f"runs/logs/base/seed-{s}.log").read_text() for s in (0, 1))
    other = tmp_path / "other.sqlite"
    code, out, err = cli(capsys, "sweep", path, "--collect", "--db", other)
    assert code == 0 and "collected 2 of 2" in out
    with Store(other) as a, Store(db) as b:
        def losses(rows):
            return sorted((r["seed"], r["val_loss"]) for r in rows)
        assert losses(a.runs("s")) == losses(b.runs("s")) == [(r["seed"], r["metrics"]["val_loss"]) for r in records]


def test_grid_arms_and_override_order(tmp_path, byte_data):
    path = write_study(tmp_path, byte_data, arms='base = []\nhalf = { "train.max_steps" = 1 }', seeds="2",
                       extra='[grid]\n"model.n_layer" = [1, 2]\n"train.matrix_lr" = [0.01, 0.02]')
    study = load_study(path)
    assert list(study.arms) == ["base", "half", "n_layer=1,matrix_lr=0.01", "n_layer=1,matrix_lr=0.02",
                                "n_layer=2,matrix_lr=0.01", "n_layer=2,matrix_lr=0.02"]
    runs = study.runs()
    assert len(runs) == 12 and [r.index for r in runs] == list(range(12)) and study.seeds == [0, 1]
    half = runs[3]
    assert half.arm == "half" and half.seed == 1
    # the budget first, then the study's overrides, the arm's (winning over the budget), the seed last
    assert half.overrides[:2] == ["train.time_budget=0", f"train.max_steps={STEPS}"]
    assert half.overrides[-2:] == ["train.max_steps=1", "train.seed=1"]
    assert runs[7].overrides[-3:] == ["model.n_layer=1", "train.matrix_lr=0.02", "train.seed=1"]


BAD_STUDIES = [
    ("preset", 'seeds = [0]\n[data]\npath = "d"\n[budget]\nmax_steps = 1', "field preset", "missing"),
    ("preset", 'preset = "nope"\n[data]\npath = "d"\n[budget]\nmax_steps = 1', "field preset", "no preset 'nope'"),
    ("unknown", 'preset = "cpu-demo"\nsedes = [0]\n[data]\npath = "d"\n[budget]\nmax_steps = 1', "field sedes", "unknown"),
    ("seeds", 'preset = "cpu-demo"\nseeds = ["a"]\n[data]\npath = "d"\n[budget]\nmax_steps = 1', "field seeds", "integers"),
    ("budget", 'preset = "cpu-demo"\n[data]\npath = "d"\n[budget]\nmax_steps = 0', "field budget", "above 0"),
    ("budget_kind", 'preset = "cpu-demo"\n[data]\npath = "d"\n[budget]\nmax_steps = 1.5', "field budget.max_steps",
     "integer"),
    ("data", 'preset = "cpu-demo"\n[data]\ncorpus = "x"\npath = "d"\n[budget]\nmax_steps = 1', "field data.tokenizer",
     "corpus and tokenizer"),
    ("arm_key", 'preset = "cpu-demo"\n[data]\npath = "d"\n[budget]\nmax_steps = 1\n[arms]\nx = ["model.nlayer=2"]',
     "field arms.x", "unknown config key 'model.nlayer'"),
    ("arm_dot", 'preset = "cpu-demo"\n[data]\npath = "d"\n[budget]\nmax_steps = 1\n[arms]\nlr0.02 = ["train.lr=0.02"]',
     "field arms.lr0", 'quote an arm\'s name that holds one: "lr0.02" = [...]'),
    ("arm_seed", 'preset = "cpu-demo"\n[data]\npath = "d"\n[budget]\nmax_steps = 1\n[arms]\nx = ["train.seed=2"]',
     "field arms.x", "seeds"),
    ("metric", 'preset = "cpu-demo"\nmetrics = ["artifact_bytes"]\n[data]\npath = "d"\n[budget]\nmax_steps = 1',
     "field metrics", "needs a [pack] table"),
    ("baseline", 'preset = "cpu-demo"\nbaseline = "zz"\n[data]\npath = "d"\n[budget]\nmax_steps = 1',
     "field baseline", "no arm 'zz'"),
    ("pack", 'preset = "cpu-demo"\n[data]\npath = "d"\n[budget]\nmax_steps = 1\n[pack]\npolicy = "int3"',
     "field pack", "int3"),
    ("grid", 'preset = "cpu-demo"\n[data]\npath = "d"\n[budget]\nmax_steps = 1\n[grid]\n"model.n_layer" = 2',
     "field grid.model.n_layer", "list"),
    ("toml", 'preset = "cpu-demo\n', "not valid TOML", "line 1"),
]


@pytest.mark.parametrize("name,text,field,message", BAD_STUDIES, ids=[b[0] for b in BAD_STUDIES])
def test_a_bad_study_file_gets_a_one_line_error_naming_the_field(tmp_path, capsys, name, text, field, message):
    path = tmp_path / f"{name}.toml"
    path.write_text(text + "\n")
    assert_one_line_error(*cli(capsys, "sweep", path, "--list")[::2], str(path), field, message)


def test_missing_study_file_data_folder_and_run_index(tmp_path, byte_data, capsys):
    assert_one_line_error(*cli(capsys, "sweep", tmp_path / "none.toml")[::2], "none.toml", "no such study file")
    path = write_study(tmp_path, tmp_path / "nodata")
    assert_one_line_error(*cli(capsys, "sweep", path, "--db", tmp_path / "r.sqlite")[::2], "field data.path",
                          "not a data folder")
    assert_one_line_error(*cli(capsys, "sweep", write_study(tmp_path, byte_data), "--only", 7)[::2], "no run 7",
                          "0 to 1")


def test_yaml_study_files_read_like_toml(tmp_path, byte_data):
    pytest.importorskip("yaml")
    path = tmp_path / "y.yaml"
    path.write_text(f"preset: cpu-demo\nseeds: 3\ndata: {{path: {byte_data}}}\nbudget: {{time_budget: 5}}\n"
                    f"arms: {{base: [], wide: {{model.d_model: 64}}}}\n")
    study = load_study(path)
    assert study.name == "y" and study.seeds == [0, 1, 2] and study.arms == {"base": [], "wide": ["model.d_model=64"]}
    assert study.runs()[3].overrides == ["train.time_budget=5", "train.max_steps=0", "model.d_model=64", "train.seed=0"]
    with pytest.raises(LmgolfError, match="field seeds"):
        path.write_text("preset: cpu-demo\nseeds: 0\ndata: {path: d}\nbudget: {time_budget: 5}\n")
        load_study(path)


def test_a_version_1_store_is_migrated_and_its_rows_read_as_ok(tmp_path):
    db = tmp_path / "old.sqlite"
    with sqlite3.connect(db) as conn:
        conn.executescript(MIGRATIONS[1])
        conn.execute("INSERT INTO runs (path, study, arm, seed, val_loss) VALUES ('old/run', 'st', 'a', 0, 2.5)")
        conn.execute("PRAGMA user_version = 1")
    with Store(db) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        store.add_row("new/run", study="st", arm="a", seed=1, status="failed", error="boom")
        rows = store.runs("st")
    assert [(r["path"], r["status"], r["error"], r["val_loss"]) for r in rows] == [
        ("old/run", "ok", None, 2.5), ("new/run", "failed", "boom", None)]
