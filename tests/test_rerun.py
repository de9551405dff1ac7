"""`lmgolf rerun RUN --out NEW` (docs/studies.md): the same seed on the same machine gives the same run
(val loss equal to the last bit), a data folder with another fingerprint is refused in one line, and a
difference is reported as one, within the stated tolerance or not."""

import json

import pytest

from conftest import assert_one_line_error, cli, tiny_cfg
from lmgolf.study.rerun import RerunReport

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def finished_run(byte_data, tmp_path_factory, one_thread):
    from lmgolf.training.trainer import train
    out = tmp_path_factory.mktemp("rerun") / "original"
    train(tiny_cfg("train.max_steps=3", "train.time_budget=0", "train.seed=5"), byte_data, out, progress=False)
    return out


def test_rerun_of_a_step_budget_matches_exactly(finished_run, tmp_path, capsys):
    code, out, err = cli(capsys, "rerun", finished_run, "--out", tmp_path / "again", "--quiet")
    assert code == 0, err
    assert "(seed 5)" in out and "result: matches (exactly)" in out and "DIFFERS" not in out
    original = json.loads((finished_run / "summary.json").read_text())
    again = json.loads((tmp_path / "again" / "summary.json").read_text())
    assert again["val_loss"] == original["val_loss"] and again["steps"] == original["steps"] == 3
    assert (tmp_path / "again" / "config.json").read_text() == (finished_run / "config.json").read_text()


def test_rerun_refuses_data_with_another_fingerprint(finished_run, small_corpus, tmp_path, capsys):
    from lmgolf.data.prepare import prepare_data
    other = tmp_path / "other"
    prepare_data(str(small_corpus), "byte", other, val_fraction=0.2, progress=False)  # the same tokenizer, other split
    code, out, err = cli(capsys, "rerun", finished_run, "--out", tmp_path / "again", "--data", other)
    assert_one_line_error(code, err, "rerun: data folder", "data fingerprint", "same data")
    assert not (tmp_path / "again").exists()


def test_rerun_refuses_an_unfinished_run_and_its_own_folder(finished_run, tmp_path, capsys):
    assert_one_line_error(*cli(capsys, "rerun", tmp_path / "nope", "--out", tmp_path / "x")[::2], "not a run folder")
    assert_one_line_error(*cli(capsys, "rerun", finished_run, "--out", finished_run)[::2], "the run itself")


def test_a_difference_is_reported_against_the_tolerance():
    report = RerunReport("a", "b", 0, tolerance=0.0, rows=[("val_loss", 2.5, 2.5 + 1e-9), ("steps", 3, 3)])
    assert not report.matches and "does NOT match (exactly)" in report.format() and "DIFFERS" in report.format()
    report.tolerance = 1e-6
    assert report.matches and "matches (within 1e-06)" in report.format()
    report.rows.append(("steps", 3, 4))
    assert not report.matches
