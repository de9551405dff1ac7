"""Every evaluation mode is a legal compressor: a target's score depends only on earlier tokens, every target
is scored exactly once, and every score comes from a distribution that sums to 1 over the whole vocabulary.
The built-in modes are checked with the public tool, lmgolf.eval.legality.check_legality, and the tool is
checked on cheating modes written here: each must be caught under the property it breaks, and only that."""

import copy

import numpy as np
import pytest
import torch

import lmgolf.eval.evaluate as ev
from lmgolf.config import ModelConfig
from lmgolf.errors import LmgolfError
from lmgolf.eval.evaluate import Tally, document_plan, evaluate, fit_temperature, result_from, window_nats, window_plan
from lmgolf.eval.legality import CHECKS, IllegalEvaluation, check_legality
from lmgolf.model.gpt import GPT
from lmgolf.eval.ttt import TTTConfig, evaluate_ttt, train_step, ttt_chunks

VOCAB, CONTEXT, N = 16, 8, 60
BOS_AT = [0, 13, 29, 30, 45]  # an empty document at 29, a document ending right at a probe position
PROBES = [12, 29, 44]         # t: tokens after t are replaced
POSITIONS = [17, 22]          # j: every value tried; the first target of a chunk (chunk = context = 8), one inside

MODELS = {
    "plain": dict(n_layer=1),
    "docmask-bigram-smear": dict(n_layer=2, doc_mask=True, bigram_buckets=16, bigram_dim=8, smear_gate=True),
}

MODES = {
    "window": lambda m, t, b: evaluate(m, t, b, CONTEXT, progress=False, per_token=True),
    "window-stride3": lambda m, t, b: evaluate(m, t, b, CONTEXT, stride=3, progress=False, per_token=True),
    "docs": lambda m, t, b: evaluate(m, t, b, CONTEXT, docs=True, progress=False, per_token=True),
    "docs-stride3": lambda m, t, b: evaluate(m, t, b, CONTEXT, stride=3, docs=True, progress=False, per_token=True),
    "temperature": lambda m, t, b: evaluate(m, t, b, CONTEXT, stride=4, progress=False, per_token=True,
                                            temperature=fit_temperature(m, TRAIN % m.cfg.vocab_size, CONTEXT, fit_tokens=64)),
    "ttt-sgd": lambda m, t, b: ttt(m, t, b, TTTConfig(steps=2, lr=0.05)),
    "ttt-sgd-reset": lambda m, t, b: ttt(m, t, b, TTTConfig(steps=2, lr=0.05, reset_docs=True)),
    "ttt-sgd-chunk5-stride3": lambda m, t, b: ttt(m, t, b, TTTConfig(steps=1, lr=0.05, chunk=5), stride=3),
    "ttt-lora": lambda m, t, b: ttt(m, t, b, TTTConfig(steps=2, lr=0.2, optimizer="lora", lora_rank=2)),
    "ttt-lora-reset": lambda m, t, b: ttt(m, t, b, TTTConfig(steps=2, lr=0.2, optimizer="lora", lora_rank=2, reset_docs=True)),
    "ttt-docs-lora-reset": lambda m, t, b: ttt(m, t, b, TTTConfig(steps=1, lr=0.2, optimizer="lora", lora_rank=2,
                                                                  reset_docs=True, docs=True)),
    "ttt-docs-sgd": lambda m, t, b: ttt(m, t, b, TTTConfig(steps=1, lr=0.05, docs=True, chunk=4), stride=2),
}

TRAIN = np.random.default_rng(99).integers(0, VOCAB, size=400)


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only contend


def ttt(model, tokens, nbytes, cfg, stride=None):
    return evaluate_ttt(model, tokens, nbytes, CONTEXT, cfg, stride=stride, progress=False, per_token=True)


def stream(seed=0):
    tokens = np.random.default_rng(seed).integers(1, VOCAB, size=N)
    tokens[BOS_AT] = 0
    nbytes = np.where(tokens == 0, 0, 1 + tokens % 3)
    return tokens, nbytes


def make_model(name="plain"):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=VOCAB, d_model=16, n_head=2, context=CONTEXT, bos_id=0, **MODELS[name]))


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    return make_model(request.param)


@pytest.fixture(scope="module")
def plain():
    return make_model()


@pytest.mark.parametrize("mode", list(MODES))
def test_every_builtin_mode_is_legal(model, mode):
    tokens, nbytes = stream()
    report = check_legality(MODES[mode], model, tokens, nbytes, probes=PROBES, positions=POSITIONS)
    assert report.ok and report.checks == CHECKS
    assert report.runs == 2 + len(PROBES) + len(POSITIONS) * VOCAB
    assert report.distributions > 0, "the mode did not score through lmgolf.eval.evaluate.log_probs"
    assert report.later_change > 1e-4  # the replaced tokens do matter later on: the causality check means something
    assert set(report.sums) == set(POSITIONS)
    assert all(abs(s - 1) < 1e-5 for s in report.sums.values())


def test_log_probs_sum_to_one_even_for_extreme_logits():
    logits = torch.randn(3, 5, 100) * 1e3
    for temperature in (None, 0.05, 1.0, 7.5):
        assert torch.logsumexp(ev.log_probs(logits, temperature).double(), -1).abs().max() < 1e-5


# ---------------------------------------------------------------- cheating modes the tool must catch


def lookahead(model, tokens, nbytes):
    """Mixes the model half and half with a guess of target j made from token j + 1 (a normalized
    distribution over the vocabulary, peaked at the next token): it peeks at the future."""
    result = evaluate(model, tokens, nbytes, CONTEXT, progress=False, per_token=True)
    values = np.arange(VOCAB)
    guess = np.full(len(tokens) - 1, 1 / VOCAB)  # no next token after the last target: uniform
    for j in range(1, len(tokens) - 1):
        weights = np.exp(-np.abs(values - tokens[j + 1]) / 4)
        guess[j - 1] = weights[tokens[j]] / weights.sum()
    return -np.log(0.5 * np.exp(-result.nats) + 0.5 * guess), result.counts


def overlapping(model, tokens, nbytes):
    """Sliding windows of stride 3 that forget to drop the overlap: every window scores all its targets."""
    plan = [(start, end, start + 1) for start, end, _ in window_plan(len(tokens), CONTEXT, 3)]
    tally = Tally(len(tokens), per_token=True)
    with torch.no_grad():
        tally.add(plan, window_nats(model, tokens, plan, "cpu", torch.float32))
    return result_from(tally, nbytes, len(tokens), 0.0, CONTEXT, 3)


def skip_bos(model, tokens, nbytes):
    """Leaves out the targets that are a BOS: they cover 0 bytes, so why pay for them?"""
    result = evaluate(model, tokens, nbytes, CONTEXT, progress=False, per_token=True)
    bos = tokens[1:] == 0
    return np.where(bos, 0.0, result.nats), np.where(bos, 0, result.counts)


def train_then_score(chunk):
    """Test-time training done wrong: each chunk is learned from FIRST and scored after."""
    def mode(model, tokens, nbytes):
        work = copy.deepcopy(model)
        opt = torch.optim.SGD(work.parameters(), lr=0.2)
        tally = Tally(len(tokens), per_token=True)
        for plan in ttt_chunks(tokens, len(tokens), CONTEXT, CONTEXT, TTTConfig(chunk=chunk), None)[0]:
            train_step(work, opt, tokens, plan, "cpu", torch.float32, 1 << 20)
            with torch.no_grad():
                tally.add(plan, window_nats(work, tokens, plan, "cpu", torch.float32))
        return result_from(tally, nbytes, len(tokens), 0.0, CONTEXT, CONTEXT)
    return mode


def free_bos(model, tokens, nbytes):
    """A BOS covers 0 bytes, so this mode leaves it out of the softmax and charges it nothing: the
    distribution over the other 15 values sums to 1, and the BOS gets probability 1 on top."""
    nats, counts = np.zeros(len(tokens) - 1), np.zeros(len(tokens) - 1, dtype=np.int64)
    with torch.no_grad():
        for start, end, first in window_plan(len(tokens), CONTEXT, CONTEXT):
            rows = ev.log_probs(model(torch.as_tensor(tokens[start:end])[None])[0, :, 1:])  # ids 1..15 only
            for j in range(first, end + 1):
                nats[j - 1] = 0.0 if tokens[j] == 0 else -float(rows[j - start - 1, tokens[j] - 1])
                counts[j - 1] += 1
    return nats, counts


def forgot_logsumexp(model, tokens, nbytes):
    """Takes logits minus their maximum for log-probabilities, without going through log_probs."""
    nats, counts = np.zeros(len(tokens) - 1), np.zeros(len(tokens) - 1, dtype=np.int64)
    with torch.no_grad():
        for start, end, first in window_plan(len(tokens), CONTEXT, CONTEXT):
            logits = model(torch.as_tensor(tokens[start:end])[None])[0]
            for j in range(first, end + 1):
                row = logits[j - start - 1]
                nats[j - 1] = float(row.max() - row[tokens[j]])
                counts[j - 1] += 1
    return nats, counts


def in_place_ttt(model, tokens, nbytes):
    """Score-first TTT on the caller's model itself: every run starts where the last one left off."""
    opt = torch.optim.SGD(model.parameters(), lr=0.2)
    result = evaluate(model, tokens, nbytes, CONTEXT, progress=False, per_token=True)
    plan = window_plan(len(tokens), CONTEXT, CONTEXT)
    train_step(model, opt, tokens, plan, "cpu", torch.float32, 1 << 20)
    return result


CHEATS = {  # mode, the properties it breaks (exactly)
    "lookahead": (lookahead, {"causal"}),
    "overlapping": (overlapping, {"scored_once"}),
    "skip-bos": (skip_bos, {"scored_once", "sums_to_one"}),
    "train-then-score-chunk": (train_then_score(CONTEXT), {"causal", "sums_to_one"}),
    "train-then-score-each-target": (train_then_score(1), {"sums_to_one"}),
    "free-bos": (free_bos, {"normalized", "sums_to_one"}),
    "forgot-logsumexp": (forgot_logsumexp, {"sums_to_one"}),
}


@pytest.mark.parametrize("cheat", list(CHEATS))
def test_the_tool_catches_a_cheating_mode_under_the_property_it_breaks(plain, cheat):
    mode, broken = CHEATS[cheat]
    tokens, nbytes = stream()
    with pytest.raises(IllegalEvaluation) as caught:
        check_legality(mode, plain, tokens, nbytes, probes=PROBES, positions=POSITIONS[:1])
    assert caught.value.properties == broken
    names = ", ".join(p for p in CHECKS if p in broken)
    assert str(caught.value).startswith(f"illegal evaluation mode ({names}):")
    assert all(f"\n  {p}: " in str(caught.value) for p in broken)


def test_violations_name_the_position_and_the_numbers(plain):
    tokens, nbytes = stream()
    report = check_legality(train_then_score(CONTEXT), plain, tokens, nbytes, probes=[12], positions=[17],
                            raise_on_violation=False)
    causal, sums = report.violations
    assert causal.property == "causal" and "the tokens after 12 changed the score of target" in causal.message
    assert sums.property == "sums_to_one" and "values of target 17 sum to" in sums.message
    assert abs(report.sums[17] - 1) > 1e-3 and not report.ok
    report = check_legality(overlapping, plain, tokens, nbytes, checks=["scored_once"], raise_on_violation=False)
    assert str(report.violations[0]).startswith("scored_once: target 4 (of 1..59) was scored 2 times")
    report = check_legality(forgot_logsumexp, plain, tokens, nbytes, raise_on_violation=False)
    assert report.distributions == 0 and "no distribution went through" in report.format()


def test_a_mode_that_changes_the_model_is_not_deterministic():
    model = make_model()
    tokens, nbytes = stream()
    with pytest.raises(IllegalEvaluation) as caught:
        check_legality(in_place_ttt, model, tokens, nbytes, checks=["deterministic"])
    assert caught.value.properties == {"deterministic"}
    assert "scoring the same stream twice gave target" in str(caught.value)


def test_default_probes_and_positions_and_contract_errors(plain):
    tokens, nbytes = stream()
    report = check_legality(MODES["window"], plain, tokens, nbytes)
    assert report.ok and len(report.probes) == 3 and len(report.positions) == 2
    assert all(1 <= t <= N - 2 for t in report.probes) and all(N // 2 <= j <= N - 1 for j in report.positions)
    no_scores = lambda m, t, b: evaluate(m, t, b, CONTEXT, progress=False)  # per_token left off
    with pytest.raises(LmgolfError, match="per-target scores"):
        check_legality(no_scores, plain, tokens, nbytes)
    with pytest.raises(LmgolfError, match="unknown check 'causality'"):
        check_legality(MODES["window"], plain, tokens, nbytes, checks=["causality"])
    assert ev.log_probs.__name__ == "log_probs"  # the tool put the shared function back


# ---------------------------------------------------------------- the plans themselves


def scored_targets(plan):
    return [j for _, end, first in plan for j in range(first, end + 1)]


@pytest.mark.parametrize("seed", range(30))
def test_every_plan_scores_each_target_once_and_docs_stay_inside(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 80))
    context = int(rng.integers(1, 12))
    stride = int(rng.integers(1, context + 1))
    tokens = rng.integers(0, 4, size=n)  # BOS = 0: frequent, adjacent, possibly at the very end
    assert scored_targets(window_plan(n, context, stride)) == list(range(1, n))
    plan = document_plan(tokens, n, context, stride, bos_id=0)
    assert scored_targets(plan) == list(range(1, n))
    for start, end, first in plan:
        assert end - start <= context and start < first <= end
        assert not np.any(tokens[start + 1:end] == 0), "a document window reaches across a BOS"
    for docs in (False, True):
        for reset in (False, True):
            cfg = TTTConfig(chunk=int(rng.integers(1, 10)), docs=docs, reset_docs=reset)
            spans = ttt_chunks(tokens, n, context, stride, cfg, 0)
            chunks = [chunk for span in spans for chunk in span]
            assert scored_targets([w for chunk in chunks for w in chunk]) == list(range(1, n))
            assert all(len(scored_targets(chunk)) <= cfg.chunk for chunk in chunks)


def test_the_docs_example_prints_what_the_docs_say(capsys):
    from pathlib import Path
    doc = (Path(__file__).parents[1] / "docs" / "compression.md").read_text()
    section = doc.split("## Checking an evaluation mode of your own")[1]
    code = section.split("```python\n")[1].split("```")[0]
    printed = section.split("prints\n\n```\n")[1].split("```")[0]
    exec(compile(code, "docs/compression.md", "exec"), {})
    out = capsys.readouterr().out
    first, *rest = out.splitlines()
    expected_first, *expected_rest = printed.splitlines()
    assert first.split(" (")[0] == expected_first.split(" (")[0]  # all but the seconds
    assert rest == expected_rest
