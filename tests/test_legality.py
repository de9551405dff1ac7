"""Every evaluation mode is a legal compressor: a target's score depends only on earlier tokens, every target
is scored exactly once, and every score comes from a distribution that sums to 1 over the whole vocabulary."""

import numpy as np
import pytest
import torch

import lmgolf.eval.evaluate as ev
from lmgolf.config import ModelConfig
from lmgolf.eval.evaluate import document_plan, evaluate, fit_temperature, window_plan
from lmgolf.model.gpt import GPT
from lmgolf.eval.ttt import TTTConfig, evaluate_ttt, ttt_chunks

VOCAB, CONTEXT, N = 32, 8, 60
BOS_AT = [0, 13, 29, 30, 45]  # an empty document at 29, a document ending right at a probe position
PROBES = [12, 29, 44]         # t: tokens after t are perturbed

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


@pytest.fixture(scope="module", params=list(MODELS))
def model(request):
    torch.manual_seed(0)
    return GPT(ModelConfig(vocab_size=VOCAB, d_model=16, n_head=2, context=CONTEXT, bos_id=0, **MODELS[request.param]))


@pytest.mark.parametrize("mode", list(MODES))
def test_scores_up_to_t_ignore_later_tokens(model, mode):
    tokens, nbytes = stream()
    base = MODES[mode](model, tokens, nbytes)
    assert base.tokens == N - 1 and base.bytes == nbytes[1:].sum()
    assert np.all(base.counts == 1) and np.all(np.isfinite(base.nats))
    assert base.loss * base.tokens == pytest.approx(base.nats.sum(), rel=1e-9)
    for t in PROBES:
        changed = tokens.copy()
        changed[t + 1:] = np.random.default_rng(t).integers(0, VOCAB, size=N - t - 1)  # BOS may appear or vanish
        other = MODES[mode](model, changed, nbytes)
        assert np.all(other.counts == 1)
        assert np.abs(other.nats[:t] - base.nats[:t]).max() <= 1e-6, f"{mode}: a target <= {t} saw a later token"
        assert np.abs(other.nats[t:] - base.nats[t:]).max() > 1e-4  # the perturbation does matter later on


@pytest.mark.parametrize("mode", list(MODES))
def test_every_score_comes_from_a_normalized_distribution(model, mode, monkeypatch):
    seen = []

    def checked(logits, temperature=None):
        out = original(logits, temperature)
        seen.append(out.detach())
        return out

    original = ev.log_probs
    monkeypatch.setattr(ev, "log_probs", checked)
    tokens, nbytes = stream(1)
    result = MODES[mode](model, tokens, nbytes)
    assert seen, "the mode did not score through lmgolf.eval.evaluate.log_probs"
    for rows in seen:
        assert rows.shape[-1] == VOCAB
        assert torch.logsumexp(rows.double(), dim=-1).abs().max() < 1e-5
    assert np.all(result.nats > 0)


@pytest.mark.parametrize("mode", list(MODES))
def test_probabilities_over_all_values_of_a_target_sum_to_one(mode):
    """Hold the past fixed and try every value v of target j: a legal mode charges -log p(v) from ONE
    distribution that does not depend on v, so sum_v exp(-nats) = 1. Learning from a target before scoring
    it (or peeking at it any other way) breaks the sum."""
    torch.manual_seed(0)
    vocab = 8  # small, to try every value cheaply
    model = GPT(ModelConfig(vocab_size=vocab, n_layer=1, d_model=16, n_head=2, context=CONTEXT, bos_id=0))
    tokens, nbytes = stream(2)
    tokens %= vocab
    for j in (17, 22):  # the first target of a chunk (chunk = context = 8), and one inside a chunk
        total = 0.0
        for v in range(vocab):
            tokens[j] = v
            total += np.exp(-MODES[mode](model, tokens[:j + 1], nbytes[:j + 1]).nats[j - 1])
        assert total == pytest.approx(1.0, abs=1e-5), f"{mode}: target {j}"


def test_log_probs_sum_to_one_even_for_extreme_logits():
    logits = torch.randn(3, 5, 100) * 1e3
    for temperature in (None, 0.05, 1.0, 7.5):
        assert torch.logsumexp(ev.log_probs(logits, temperature).double(), -1).abs().max() < 1e-5


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
