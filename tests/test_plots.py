"""Study plots (lmgolf.study.plots, lmgolf plot) from a synthetic results store and synthetic run folders:
the files are valid PNG and SVG, and what they draw (KIND.json) is what was asked: per-arm aggregation over
seeds, seed bands of the metrics logs, 95% t-intervals (against scipy.stats.t), the Pareto front (against
brute force), bytes per token and FLOPs per byte. Generation timing is measured once, on a real tiny run."""

import json
import math
import random
import sys
import xml.etree.ElementTree as ET

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from conftest import assert_one_line_error, cli, tiny_cfg

pytest.importorskip("matplotlib")
scipy_stats = pytest.importorskip("scipy.stats")

# arm -> (vocab size, d_model, final bpb mean, bytes per token)
ARMS = {"base": (256, 32, 1.60, 1.0), "wide": (256, 64, 1.52, 1.0), "v512": (512, 32, 1.55, 1.7),
        "deep": (256, 32, 1.62, 1.0)}
SEEDS = (1, 2, 3)
STEPS = list(range(0, 101, 10))


def synthetic_run(folder, arm, seed, steps=STEPS):
    """A run folder with config.json and metrics.jsonl (training loss every 10 steps, validation at 50 and
    100) and the store row it would have."""
    vocab, width, bpb, bpt = ARMS[arm]
    rng = random.Random(f"{arm}{seed}")
    final = bpb + rng.gauss(0, 0.01)
    folder.mkdir(parents=True)
    tiny_cfg(f"model.vocab_size={vocab}", f"model.d_model={width}").save(folder / "config.json")
    lines = []
    for s in steps:
        loss = final * math.log(2) * bpt + 3.0 * math.exp(-s / 20) + rng.gauss(0, 0.02)
        lines.append({"step": s, "loss": loss, "tokens": 256 * s, "elapsed": 0.1 * s, "lr_mult": 1.0})
        if s in (50, 100):
            lines.append({"step": s, "val_loss": final * math.log(2) * bpt + 3.0 * math.exp(-s / 20),
                          "val_bpb": final + 3.0 * math.exp(-s / 20) / math.log(2) / bpt, "val_tokens": 512})
    lines.append({"step": steps[-1], "val_loss": 9.9, "val_bpb": 9.9, "weights": "ema"})  # not the raw curve
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in lines) + '{"step": 10')  # torn
    params = 1000 * width + vocab * width
    return dict(path=str(folder), study="s", arm=arm, seed=seed, val_loss=final * math.log(2) * bpt, val_bpb=final,
                params=params, train_flops=6.0 * params * 25600, tokens=25600, steps=100)


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    from lmgolf.study.store import Store
    root = tmp_path_factory.mktemp("study")
    rows = [synthetic_run(root / f"{arm}-{seed}", arm, seed) for arm in ARMS for seed in SEEDS]
    with Store(root / "results.sqlite") as store:
        for row in rows:
            store.add_row(**row)
        stored = store.runs("s")
    return root, stored


def loaded(path):
    return json.loads(path.read_text())


def assert_valid_images(out, kind):
    png = (out / f"{kind}.png").read_bytes()
    assert png.startswith(b"\x89PNG\r\n\x1a\n") and len(png) > 5000
    root = ET.fromstring((out / f"{kind}.svg").read_bytes())
    assert root.tag.endswith("svg")


# ---------------------------------------------------------------- the pure functions


def test_t_quantile_matches_scipy_including_fractional_degrees_of_freedom():
    from lmgolf.study.stats import t_quantile
    for df in (1, 2, 2.5, 4, 9.3, 30, 200):
        for p in (0.025, 0.5, 0.9, 0.975, 0.995):
            assert t_quantile(p, df) == pytest.approx(scipy_stats.t.ppf(p, df), abs=1e-9, rel=1e-9)


def test_t_interval_is_scipys_95_percent_t_interval_of_the_mean():
    from lmgolf.study.stats import t_interval
    for values in ([1.5, 1.52, 1.49], [2.0, 2.1], [1.0, 1.01, 1.03, 0.98, 1.0, 1.02]):
        got = t_interval(values)
        lo, hi = scipy_stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=scipy_stats.sem(values))
        assert (got.lo, got.hi) == (pytest.approx(lo, rel=1e-10), pytest.approx(hi, rel=1e-10))
    single = t_interval([1.5])
    assert (single.mean, single.lo, single.hi) == (1.5, None, None)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 20), st.integers(0, 20)), min_size=1, max_size=25, unique=True))
def test_pareto_front_keeps_exactly_the_points_no_other_point_beats(points):
    from lmgolf.study.plotdata import pareto_front

    def beaten(i):
        return any(q[0] <= points[i][0] and q[1] <= points[i][1] and q != points[i] for q in points)

    front = pareto_front(points)
    assert set(front) == {i for i in range(len(points)) if not beaten(i)}
    assert [points[i][0] for i in front] == sorted(points[i][0] for i in front)  # ordered by cost


def test_pareto_front_keeps_one_of_equal_points():
    from lmgolf.study.plotdata import pareto_front
    assert pareto_front([(1.0, 2.0), (1.0, 2.0), (2.0, 1.0), (3.0, 1.0)]) == [0, 2]


def test_seed_band_is_the_mean_and_std_of_the_seeds_on_the_steps_they_all_cover():
    from lmgolf.study.plotdata import seed_band
    a = ([0, 10, 20, 30], [4.0, 3.0, 2.0, 1.0])
    b = ([0, 10, 20], [5.0, 3.5, 2.5])  # stopped earlier (a time budget)
    c = ([0, 20], [4.5, 2.0])           # logged less often: interpolated at step 10
    band = seed_band("x", [a, b, c], "std")
    assert band.x == [0, 10, 20] and band.seeds == 3
    at10 = [3.0, 3.5, 3.25]
    assert band.mean[1] == pytest.approx(np.mean(at10))
    assert band.hi[1] - band.mean[1] == pytest.approx(np.std(at10, ddof=1))
    rng = seed_band("x", [a, b, c], "range")
    assert (rng.lo[0], rng.hi[0]) == (4.0, 5.0)


def test_the_curve_of_a_metrics_log_skips_torn_lines_and_weight_averages(study):
    from lmgolf.study.plotdata import curve, read_metrics
    root, _ = study
    records = read_metrics(root / "base-1")
    xs, ys = curve(records, "val_bpb")
    assert xs == [50.0, 100.0] and 9.9 not in ys
    assert curve(records, "loss")[0] == [float(s) for s in STEPS]


def test_validations_get_their_tokens_from_the_training_records_of_their_step():
    from lmgolf.study.plotdata import curve
    records = [{"step": 10, "loss": 3.0, "tokens": 2560}, {"step": 20, "loss": 2.0, "tokens": 5120},
               {"step": 20, "val_bpb": 1.9}, {"step": 25, "val_bpb": 1.8}]  # 25: after the last logged step
    assert curve(records, "val_bpb", "tokens") == ([5120.0, 6400.0], [1.9, 1.8])


# ---------------------------------------------------------------- the figures


def test_curves_draw_each_arms_mean_over_its_seeds_from_the_run_folders(study, tmp_path):
    from lmgolf.study.plotdata import curve, read_metrics
    from lmgolf.study.plots import plot_study
    root, rows = study
    written, _ = plot_study(rows, "s", "curves", tmp_path, baseline="base")
    assert_valid_images(tmp_path, "curves")
    data = loaded(tmp_path / "curves.json")
    assert [b["arm"] for b in data["train"]] == ["base", "deep", "v512", "wide"]
    wide = next(b for b in data["train"] if b["arm"] == "wide")
    expected = np.mean([curve(read_metrics(root / f"wide-{s}"), "loss")[1] for s in SEEDS], axis=0)
    assert wide["mean"] == pytest.approx(expected.tolist()) and wide["seeds"] == 3
    assert [b["x"] for b in data["validation"]][0] == [50.0, 100.0]


def test_flops_plot_marks_the_pareto_front_of_the_arm_means(study, tmp_path):
    from lmgolf.study.plots import plot_study
    _, rows = study
    plot_study(rows, "s", "flops", tmp_path, metric="val_bpb")
    assert_valid_images(tmp_path, "flops")
    data = loaded(tmp_path / "flops.json")
    means = {a["arm"]: (a["x"], a["y"]) for a in data["arms"]}
    assert means["wide"][1] == pytest.approx(np.mean([r["val_bpb"] for r in rows if r["arm"] == "wide"]))
    # base and deep cost the same, deep is worse; v512 costs more than base; wide costs most and is best
    expected = ["base"] + (["v512"] if means["v512"][1] < means["base"][1] else []) + ["wide"]
    assert data["pareto_front"] == expected


def test_params_plot_draws_every_seed_and_the_arm_means(study, tmp_path):
    from lmgolf.study.plots import plot_study
    _, rows = study
    plot_study(rows, "s", "params", tmp_path, metric="val_loss", formats=("png",))
    assert (tmp_path / "params.png").is_file() and not (tmp_path / "params.svg").exists()
    data = loaded(tmp_path / "params.json")
    assert {a["arm"]: len(a["ys"]) for a in data["arms"]} == {arm: 3 for arm in ARMS}
    assert data["y"] == "val_loss"


def test_ablation_bars_carry_95_percent_t_intervals_and_the_golf_rules_verdict(study, tmp_path):
    from lmgolf.study.plots import plot_study
    from lmgolf.study.results import study_results
    _, rows = study
    plot_study(rows, "s", "ablation", tmp_path, metric="val_loss", baseline="base")
    assert_valid_images(tmp_path, "ablation")
    data = loaded(tmp_path / "ablation.json")
    table = {a.arm: a for a in study_results(rows, "s", baseline="base", metric="val_loss").arms}
    assert [a["arm"] for a in data["arms"]][0] == "base"
    for arm in data["arms"]:
        values = [r["val_loss"] for r in rows if r["arm"] == arm["arm"]]
        lo, hi = scipy_stats.t.interval(0.95, 2, loc=np.mean(values), scale=scipy_stats.sem(values))
        assert (arm["lo"], arm["hi"]) == (pytest.approx(lo), pytest.approx(hi))
        assert arm["golf_rule"] == table[arm["arm"]].golf


def test_vocab_plot_gives_bytes_per_token_and_forward_flops_per_byte(study, tmp_path):
    from lmgolf.config import Config
    from lmgolf.model.count import count_config
    from lmgolf.study.plots import plot_study
    root, rows = study
    plot_study(rows, "s", "vocab", tmp_path)
    assert_valid_images(tmp_path, "vocab")
    points = {p["arm"]: p for p in loaded(tmp_path / "vocab.json")["arms"]}
    assert points["v512"]["bytes_per_token"] == pytest.approx(1.7) and points["base"]["bytes_per_token"] == \
        pytest.approx(1.0)
    cfg = Config.from_dict(json.loads((root / "v512-1" / "config.json").read_text()))
    assert points["v512"]["vocab_size"] == 512
    assert points["v512"]["flops_per_byte"] == pytest.approx(count_config(cfg.model).forward_flops_per_token / 1.7)
    assert points["v512"]["seconds_per_byte"] is None  # not measured unless asked


def test_generation_time_per_byte_is_measured_from_a_runs_checkpoint(api_run):
    from lmgolf.study.vocab_cost import measure_generation
    record = measure_generation(api_run.path, new_tokens=12, warmup=2)
    assert record["tokens"] == 12 and record["bytes"] > 0
    assert record["seconds_per_byte"] == pytest.approx(record["seconds"] / record["bytes"])


# ---------------------------------------------------------------- the command


def test_plot_all_writes_every_kind_from_the_store(study, tmp_path, capsys):
    root, _ = study
    code, out, err = cli(capsys, "plot", "s", "--db", root / "results.sqlite", "--out", tmp_path / "figs",
                         "--baseline", "base", "--format", "png")
    assert code == 0, err
    names = sorted(p.name for p in (tmp_path / "figs").iterdir())
    assert names == sorted(f"{k}.{e}" for k in ("curves", "params", "flops", "ablation", "vocab")
                           for e in ("png", "json"))
    assert "wrote 10 files" in out


def test_plot_errors_are_one_line(study, tmp_path, capsys, monkeypatch):
    root, _ = study
    db = root / "results.sqlite"
    assert_one_line_error(*cli(capsys, "plot", "nope", "--db", db, "--out", tmp_path)[::2], "no runs in study 'nope'")
    assert_one_line_error(*cli(capsys, "plot", "s", "--db", tmp_path / "none.sqlite", "--out", tmp_path)[::2],
                          "no results database")
    assert_one_line_error(*cli(capsys, "plot", "s", "--db", db, "--out", tmp_path, "--kind", "ablation",
                               "--baseline", "zzz")[::2], "no arm 'zzz'")
    assert_one_line_error(*cli(capsys, "plot", "s", "--db", db, "--out", tmp_path, "--metric", "bogus")[::2],
                          "unknown metric 'bogus'")
    assert_one_line_error(*cli(capsys, "plot", "s", "--db", db, "--out", tmp_path, "--format", "png,jpg")[::2],
                          "unknown format 'jpg'")
    assert not list(tmp_path.glob("*.png"))  # refused before drawing anything
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # what `import` sees when it is not installed
    assert_one_line_error(*cli(capsys, "plot", "s", "--db", db, "--out", tmp_path)[::2], "needs matplotlib",
                          "lmgolf[plots]")
