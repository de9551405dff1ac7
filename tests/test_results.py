"""The results store and `lmgolf results` (docs/results.md): Welch's t-test against scipy, the store's
round trip on real runs, schema version, updates, concurrent writers, the grouped table with the golf
rule, CSV and Markdown export, and one-line errors."""

import csv
import io
import json
import os
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error, cli
from lmgolf.errors import LmgolfError
from lmgolf.study import stats
from lmgolf.study.results import study_results
from lmgolf.study.store import SCHEMA_VERSION, Store, canonical_json

TINY = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.context=32", "train.batch_tokens=256",
        "train.micro_batch=4", "train.log_every=1", "train.dtype=fp32", "train.eval_tokens=512",
        "train.compile=off", "train.max_steps=2"]


# ---- statistics against scipy ----

def test_welch_matches_scipy():
    np = pytest.importorskip("numpy")
    scipy_stats = pytest.importorskip("scipy.stats")
    rng = np.random.default_rng(0)
    for _ in range(40):
        a = rng.normal(0.0, rng.uniform(0.01, 2.0), int(rng.integers(2, 25)))
        b = rng.normal(rng.uniform(-1.5, 1.5), rng.uniform(0.01, 2.0), int(rng.integers(2, 25)))
        w = stats.welch(list(a), list(b))
        for alternative, p in (("two-sided", w.p_two_sided), ("less", w.p_less), ("greater", w.p_greater)):
            ref = scipy_stats.ttest_ind(a, b, equal_var=False, alternative=alternative)
            assert abs(ref.statistic - w.t) < 1e-10
            assert abs(ref.pvalue - p) < 1e-10, (alternative, ref.pvalue, p)
            assert abs(ref.df - w.df) < 1e-8 * max(1.0, ref.df)


def test_t_distribution_and_incomplete_beta_match_scipy():
    scipy_special = pytest.importorskip("scipy.special")
    scipy_stats = pytest.importorskip("scipy.stats")
    for a, b, x in [(0.5, 0.5, 0.3), (2.5, 0.5, 0.9), (10.0, 0.5, 0.01), (1.3, 7.2, 0.5), (50.0, 0.5, 0.999)]:
        assert abs(stats.betainc(a, b, x) - scipy_special.betainc(a, b, x)) < 1e-12
    for t in (-8.0, -1.5, 0.0, 0.3, 2.9, 12.0):
        for df in (1.0, 2.7, 9.5, 120.0):
            assert abs(stats.t_sf(t, df) - scipy_stats.t.sf(t, df)) < 1e-12


def test_mean_std_uses_the_sample_std_and_welch_needs_two_values_a_side():
    mean, std, n = stats.mean_std([1.0, 2.0, 3.0, 4.0])
    assert (mean, n) == (2.5, 4) and abs(std - (5 / 3) ** 0.5) < 1e-15
    assert stats.mean_std([3.0])[1] is None
    with pytest.raises(LmgolfError, match="at least 2"):
        stats.welch([1.0], [1.0, 2.0])
    assert stats.golf_rule(0.006, 0.009) and not stats.golf_rule(0.004, 1e-6) and not stats.golf_rule(0.01, 0.02)


# ---- the store on real runs ----

@pytest.fixture(scope="module")
def two_runs(byte_data, tmp_path_factory):
    import torch
    from lmgolf.config import load_config
    from lmgolf.training.trainer import train
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    root = tmp_path_factory.mktemp("results_runs")
    runs = []
    for seed in (1, 2):
        out = root / f"run{seed}"
        train(load_config("cpu-demo", TINY + [f"train.seed={seed}"]), byte_data, out, progress=False)
        runs.append(out)
    torch.set_num_threads(threads)
    return runs


def test_store_round_trip_on_real_runs(two_runs, tmp_path):
    db = tmp_path / "r.sqlite"
    with Store(db) as store:
        assert store.schema_version == SCHEMA_VERSION == 2
        for run in two_runs:
            store.add_run(run, study="s", arm="base")
        rows = store.runs("s")
    assert [r["path"] for r in rows] == [str(r.resolve()) for r in two_runs]
    assert [r["seed"] for r in rows] == [1, 2]
    for run, row in zip(two_runs, rows):
        summary = json.loads((run / "summary.json").read_text())
        record = json.loads((run / "run.json").read_text())
        config = json.loads((run / "config.json").read_text())
        assert row["val_loss"] == summary["val_loss"] and row["val_bpb"] == summary["val_bpb"]
        assert (row["steps"], row["tokens"], row["wall_time"]) == (summary["steps"], summary["tokens"], summary["elapsed"])
        assert row["code_version"] == record["code"] and row["machine"]["cpu_count"] == record["hardware"]["cpu_count"]
        import hashlib
        assert row["config_hash"] == hashlib.sha256(canonical_json(config).encode()).hexdigest()
        from lmgolf.config import Config
        from lmgolf.model.count import count_config
        count = count_config(Config.from_dict(config).model)
        assert row["params"] == count.params and row["train_flops"] == count.train_flops_per_token * summary["tokens"]
        assert row["artifact_bytes"] is None and len(row["data_fingerprint"]) == 64
    assert rows[0]["config_hash"] != rows[1]["config_hash"]  # the seeds differ
    assert rows[0]["data_fingerprint"] == rows[1]["data_fingerprint"]
    with sqlite3.connect(db) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


def test_re_adding_a_run_updates_its_row(two_runs, tmp_path):
    db = tmp_path / "r.sqlite"
    with Store(db) as store:
        store.add_run(two_runs[0], study="s", arm="a")
        store.add_run(two_runs[0], study="s", arm="b", seed=7)
        (two_runs[0] / "model.lmg").write_bytes(b"x" * 123)  # a packed artifact appears
        try:
            store.add_run(two_runs[0], study="s", arm="b", seed=7)
        finally:
            (two_runs[0] / "model.lmg").unlink()
        rows = store.runs()
    assert len(rows) == 1 and rows[0]["arm"] == "b" and rows[0]["seed"] == 7 and rows[0]["artifact_bytes"] == 123


def test_cli_adds_runs_and_shows_the_study(two_runs, tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    code, out, err = cli(capsys, "results", "add", *two_runs, "--study", "s", "--arm", "base", "--db", db)
    assert code == 0, err
    assert out.count("added ") == 2
    code, out, err = cli(capsys, "results", "s", "--db", db, "--csv", tmp_path / "t.csv")
    assert code == 0, err
    assert "| base | 2 |" in out
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert rows[0]["arm"] == "base" and rows[0]["n"] == "2"


WRITER = """
import sys
from lmgolf.study.store import Store
db, worker = sys.argv[1], int(sys.argv[2])
with Store(db) as store:
    for i in range(25):
        store.add_row(f"synthetic/{worker}/{i}", study="c", arm=f"w{worker}", seed=i, val_loss=1.0 + i)
"""


def test_concurrent_writers_lose_no_row(tmp_path):
    """4 processes (which import only the store, not torch) each add 25 rows to one database at once."""
    db = tmp_path / "r.sqlite"
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(root), os.environ.get("PYTHONPATH", "")])}
    procs = [subprocess.Popen([sys.executable, "-c", WRITER, str(db), str(w)], env=env, stderr=subprocess.PIPE)
             for w in range(4)]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
    with Store(db) as store:
        rows = store.runs("c")
    assert len(rows) == 100 and len({r["path"] for r in rows}) == 100
    assert {r["arm"] for r in rows} == {"w0", "w1", "w2", "w3"}


# ---- the table on synthetic rows ----

BASE = [3.000, 3.002, 2.998, 3.001, 2.999]
GOOD = [2.990, 2.992, 2.988, 2.991, 2.989]      # 0.010 better, tight: passes the rule
SMALL = [2.997, 2.999, 2.995, 2.998, 2.996]     # 0.003 better: significant but under 0.005
NOISY = [2.990, 3.010, 2.970, 3.000, 2.980]     # 0.010 better on average, too noisy


def synthetic_store(path):
    store = Store(path)
    for arm, losses in (("base", BASE), ("good", GOOD), ("small", SMALL), ("noisy", NOISY)):
        for seed, loss in enumerate(losses):
            store.add_row(f"syn/{arm}/{seed}", study="golf", arm=arm, seed=seed, val_loss=loss, val_bpb=loss / 2.0,
                          artifact_bytes=15_000_000 + seed, params=1000, wall_time=600.0)
    return store


def test_results_table_flags_the_golf_rule_both_ways(tmp_path):
    scipy_stats = pytest.importorskip("scipy.stats")
    with synthetic_store(tmp_path / "r.sqlite") as store:
        table = study_results(store.runs("golf"), "golf", baseline="base")
    arms = {a.arm: a for a in table.arms}
    assert [a.arm for a in table.arms] == ["base", "good", "noisy", "small"]
    assert arms["good"].golf is True and arms["small"].golf is False and arms["noisy"].golf is False
    assert arms["base"].golf is None and arms["base"].test is None
    assert abs(arms["good"].improvement - 0.010) < 1e-12 and abs(arms["small"].improvement - 0.003) < 1e-12
    ref = scipy_stats.ttest_ind(GOOD, BASE, equal_var=False, alternative="less")
    assert abs(arms["good"].test.p_less - ref.pvalue) < 1e-10 and arms["small"].test.p_less < 0.01
    assert arms["noisy"].test.p_less > 0.01
    strict = scipy_stats.ttest_ind([v + 0.005 for v in GOOD], BASE, equal_var=False, alternative="less")
    assert abs(arms["good"].p_margin - strict.pvalue) < 1e-10 and arms["good"].golf_strict is True
    assert arms["small"].golf_strict is False and arms["small"].p_margin > 0.5
    mean, std, n = arms["base"].stats["val_loss"]
    assert n == 5 and abs(mean - 3.0) < 1e-12 and abs(std - stats.mean_std(BASE)[1]) < 1e-15


def test_per_token_losses_of_another_tokenizer_are_not_tested_but_bits_per_byte_are(tmp_path):
    with Store(tmp_path / "r.sqlite") as store:
        for arm, losses, fingerprint in (("base", BASE, "a" * 64), ("v2048", GOOD, "b" * 64)):
            for seed, loss in enumerate(losses):
                store.add_row(f"syn/{arm}/{seed}", study="vocab", arm=arm, seed=seed, val_loss=loss,
                              val_bpb=loss / 2.0, data_fingerprint=fingerprint)
        rows = store.runs("vocab")
    by_loss = {a.arm: a for a in study_results(rows, "vocab", baseline="base").arms}
    assert by_loss["v2048"].other_data and by_loss["v2048"].test is None and by_loss["v2048"].golf is None
    assert "other data or tokenizer" in study_results(rows, "vocab", baseline="base").format_markdown()
    by_bpb = {a.arm: a for a in study_results(rows, "vocab", baseline="base", metric="val_bpb").arms}
    assert not by_bpb["v2048"].other_data and by_bpb["v2048"].test is not None


def test_csv_and_markdown_export(tmp_path, capsys):
    synthetic_store(tmp_path / "r.sqlite").close()
    code, out, err = cli(capsys, "results", "golf", "--baseline", "base", "--db", tmp_path / "r.sqlite",
                         "--csv", tmp_path / "t.csv", "--markdown", tmp_path / "t.md")
    assert code == 0, err
    md = (tmp_path / "t.md").read_text()
    assert md == out
    lines = [line for line in md.splitlines() if line.startswith("| ")]
    assert lines[0].startswith("| arm | n | val_loss (nats) |") and lines[1].startswith("| --- |") and len(lines) == 6
    assert "| good | 5 | 2.9900 ± 0.0016 |" in md and "**yes**" in next(l for l in lines if l.startswith("| good"))
    assert "| no |" in next(l for l in lines if l.startswith("| small"))
    rows = list(csv.DictReader(io.StringIO((tmp_path / "t.csv").read_text())))
    assert [r["arm"] for r in rows] == ["base", "good", "noisy", "small"]
    assert rows[1]["golf_rule"] == "True" and rows[3]["golf_rule"] == "False" and rows[0]["golf_rule"] == ""
    assert float(rows[1]["val_loss_mean"]) == pytest.approx(2.99) and float(rows[1]["improvement"]) == pytest.approx(0.01)
    assert rows[1]["artifact_bytes_mean"] == repr(15_000_002.0)
    # `show` spells the same
    code, out2, _ = cli(capsys, "results", "show", "golf", "--baseline", "base", "--db", tmp_path / "r.sqlite")
    assert code == 0 and out2 == out


# ---- bad input ----

def test_bad_input_gives_one_line_errors(two_runs, tmp_path, capsys):
    db = tmp_path / "r.sqlite"
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    for name in ("run.json", "config.json"):
        (unfinished / name).write_text((two_runs[0] / name).read_text())
    assert_one_line_error(*cli(capsys, "results", "add", unfinished, "--db", db)[::2], "summary.json", "unfinished")
    (unfinished / "summary.json").write_text("{not json")
    assert_one_line_error(*cli(capsys, "results", "add", unfinished, "--db", db)[::2], "summary.json", "not valid JSON")
    assert_one_line_error(*cli(capsys, "results", "add", tmp_path / "nope", "--db", db)[::2], "not a run folder")
    assert_one_line_error(*cli(capsys, "results", "add", "--db", db)[::2], "at least one run folder")
    assert_one_line_error(*cli(capsys, "results", "empty", "--db", db)[::2], "no runs in study 'empty'")
    synthetic_store(db).close()
    assert_one_line_error(*cli(capsys, "results", "golf", "--baseline", "zzz", "--db", db)[::2], "no arm 'zzz'")
    assert_one_line_error(*cli(capsys, "results", "golf", "--metric", "loss", "--db", db)[::2], "unknown metric")
    assert_one_line_error(*cli(capsys, "results", "golf", "--arm", "x", "--db", db)[::2], "--arm")
    bad = tmp_path / "bad.sqlite"
    bad.write_bytes(b"this is not a database" * 100)
    assert_one_line_error(*cli(capsys, "results", "golf", "--db", bad)[::2], "bad.sqlite", "not a usable results database")


def test_a_newer_schema_is_refused(tmp_path):
    db = tmp_path / "r.sqlite"
    Store(db).close()
    with sqlite3.connect(db) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    with pytest.raises(LmgolfError, match="newer"):
        Store(db)
