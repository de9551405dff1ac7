"""The planner (lmgolf.study.plan, `lmgolf plan`): published points of both fits, repetition, byte budgets, input checks."""

import json
import math

import pytest

from lmgolf.cli import PLAN_HARDWARE, main
from lmgolf.errors import LmgolfError
from lmgolf.study.plan import (BESIROGLU, HARDWARE, HOFFMANN, besiroglu_loss, compute_from_hardware,
                               effective_tokens, hoffmann_loss, params_for_bytes, plan, tokens_from_compute)


def run(capsys, *argv):
    rc = main(["plan", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_the_design_notes_example_gives_4_07_not_4_75(capsys):
    rc, out, _ = run(capsys, "--params", "40e6", "--tokens", "800e6")
    assert rc == 0
    result = json.loads(out.strip().splitlines()[-1])
    expected = 1.69 + 406.4 / 40e6 ** 0.34 + 410.7 / 800e6 ** 0.28
    assert round(result["losses"]["hoffmann"], 3) == round(expected, 3) == 4.068
    assert result["tokens_per_param"] == pytest.approx(20.0)
    assert result["flops"] == pytest.approx(6 * 40e6 * 800e6)
    assert "hoffmann      4.068" in out
    assert "below the fits' range (70M" in out  # 40M parameters and 0.8B tokens are both below


def test_the_constants_are_the_published_ones():
    assert (HOFFMANN.E, HOFFMANN.A, HOFFMANN.B, HOFFMANN.alpha, HOFFMANN.beta) == (1.69, 406.4, 410.7, 0.34, 0.28)
    assert (BESIROGLU.E, BESIROGLU.A, BESIROGLU.B, BESIROGLU.alpha, BESIROGLU.beta) == \
        (1.8172, 482.01, 2085.43, 0.3478, 0.3658)
    n, d = 123e6, 4.5e9
    assert besiroglu_loss(n, d) == pytest.approx(1.8172 + 482.01 / n ** 0.3478 + 2085.43 / d ** 0.3658)


def test_chinchilla_point_under_both_fits():
    # Chinchilla: 70B parameters on 1.4T tokens; Hoffmann's fit gives about 1.94 there
    assert round(hoffmann_loss(70e9, 1.4e12), 2) == 1.94
    # the refit's irreducible loss is higher (1.82 vs 1.69) and it predicts a higher loss at Chinchilla's point
    assert round(besiroglu_loss(70e9, 1.4e12), 2) == 1.97
    assert besiroglu_loss(70e9, 1.4e12) > hoffmann_loss(70e9, 1.4e12)


def test_compute_optimal_split_at_chinchillas_compute():
    c = 6 * 70e9 * 1.4e12
    for fit in (HOFFMANN, BESIROGLU):
        n, d = fit.optimal(c)
        assert 6 * n * d == pytest.approx(c)
    # the refit recovers Chinchilla's ~20 tokens per parameter (Besiroglu et al.'s main point: 70B at 1.4T);
    # Hoffmann's rounded constants put the optimum at ~32B parameters and ~90 tokens per parameter instead
    n, d = BESIROGLU.optimal(c)
    assert 60e9 < n < 85e9 and 15 < d / n < 25
    n, d = HOFFMANN.optimal(c)
    assert 25e9 < n < 40e9 and d / n > 60


def test_compute_and_hardware():
    assert tokens_from_compute(6e18, 1e8) == pytest.approx(1e10)
    c = compute_from_hardware(989e12, 0.4, 10 / 60, 8)
    assert c == pytest.approx(989e12 * 0.4 * 8 * 600)
    p = plan(20e6, hardware="h100-bf16", hours=10 / 60, mfu=0.4, gpus=8, code_bytes=0)
    assert p.tokens == pytest.approx(c / (6 * 20e6))
    assert set(HARDWARE) == set(PLAN_HARDWARE)


def test_muennighoff_repetition():
    u = 1e9
    assert effective_tokens(0.5e9, u) == 0.5e9
    assert effective_tokens(u, u) == u  # one epoch: R = 0, D' = U
    four = effective_tokens(4 * u, u)  # R = 3 repetitions lose little
    assert four == pytest.approx(u + u * 15.39 * (1 - math.exp(-3 / 15.39)))
    assert 3.7 * u < four < 3.75 * u
    assert effective_tokens(1e6 * u, u) == pytest.approx(u * 16.39, rel=1e-6)  # the limit: U (1 + R*)
    p = plan(40e6, tokens=4e9, corpus_tokens=1e9, code_bytes=0)
    assert p.epochs == 4 and p.effective_tokens == pytest.approx(four)
    assert p.repeated_losses["hoffmann"] == pytest.approx(hoffmann_loss(40e6, four))
    assert p.repeated_losses["hoffmann"] > p.losses["hoffmann"]
    assert not any("epochs" in w for w in p.warnings)
    assert any("epochs" in w for w in plan(40e6, tokens=10e9, corpus_tokens=1e9, code_bytes=0).warnings)


def test_parameters_that_fit_a_byte_budget():
    assert params_for_bytes(16_000_000, 0, 8) == 16_000_000
    assert params_for_bytes(16_000_000, 0, 4) == 32_000_000
    assert params_for_bytes(16_000_000, 0, 2) == 64_000_000   # the errata: 64M at 2 bits, not 32M
    assert params_for_bytes(16_000_000, 1_000_000, 6) == 20_000_000
    assert params_for_bytes(16_000_000, 0, 1.58) == int(128e6 // 1.58)
    p = plan(40e6, tokens=800e6, budget_bytes=16_000_000, code_bytes=100_000)
    rows = {r["storage"]: r for r in p.fits_budget}
    assert rows["int8-row"]["params"] == 15_900_000
    assert rows["int6-row"]["params"] == 15_900_000 * 8 // 6
    assert rows["int4-row"]["params"] == 31_800_000
    assert rows["ternary"]["params"] == int(15_900_000 * 8 // 1.58)
    assert rows["int8-row"]["effective_bits"] == 8 + 16 / 512  # one fp16 scale per 512-weight row
    assert rows["ternary"]["effective_bits"] == pytest.approx(1.6 + 16 / 64)
    assert all(r["effective_params"] <= r["params"] for r in p.fits_budget)


def test_code_bytes_come_from_the_runner(capsys):
    from lmgolf.packing.runner import runner_bytes
    assert plan(40e6, tokens=8e8).code_bytes == runner_bytes("plain")
    assert plan(40e6, tokens=8e8, runner="compressed").code_bytes == runner_bytes("compressed")


def test_no_warning_inside_the_range():
    assert plan(1e9, tokens=20e9, code_bytes=0).warnings == []
    assert any("below the fits' range (70M" in w for w in plan(69e6, tokens=20e9, code_bytes=0).warnings)
    assert any("tokens is below" in w for w in plan(1e9, tokens=4e9, code_bytes=0).warnings)


@pytest.mark.parametrize("argv, flag", [
    (["--params", "-1", "--tokens", "1e9"], "--params"),
    (["--params", "nan", "--tokens", "1e9"], "--params"),
    (["--params", "4e7", "--tokens", "0"], "--tokens"),
    (["--params", "4e7"], "--tokens"),
    (["--params", "4e7", "--tokens", "1e9", "--flops", "1e18"], "--flops"),
    (["--params", "4e7", "--hardware", "tpu-v9"], "--hardware"),
    (["--params", "4e7", "--hardware", "h100-bf16"], "--hours"),
    (["--params", "4e7", "--hardware", "h100-bf16", "--hours", "1", "--mfu", "1.5"], "--mfu"),
    (["--params", "4e7", "--hardware", "h100-bf16", "--hours", "1", "--gpus", "0"], "--gpus"),
    (["--params", "4e7", "--tokens", "1e9", "--corpus-tokens", "-5"], "--corpus-tokens"),
    (["--params", "4e7", "--tokens", "1e9", "--budget-bytes", "1000"], "--budget-bytes"),
])
def test_bad_input_is_one_line_naming_the_flag(capsys, argv, flag):
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == ""
    assert err.startswith("lmgolf: error: plan: ") and flag in err and len(err.strip().splitlines()) == 1


def test_api_errors_raise_lmgolf_error():
    with pytest.raises(LmgolfError, match="--peak-flops"):
        plan(4e7, hardware="h100-bf16", peak_flops=1e15, hours=1)
