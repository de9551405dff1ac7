import math

import numpy as np
import pytest
import torch

from lmgolf.config import ModelConfig
from lmgolf.evaluate import evaluate, window_plan
from lmgolf.model import GPT


@pytest.mark.parametrize("n,context,stride", [(2, 8, 8), (9, 8, 8), (10, 8, 8), (100, 8, 8), (100, 8, 3),
                                               (100, 8, 1), (101, 16, 5), (17, 16, 16), (5, 16, 4)])
def test_each_target_scored_exactly_once(n, context, stride):
    plan = window_plan(n, context, stride)
    scored = []
    for start, end, first in plan:
        assert end - start == min(context, n - 1)  # full windows: every window has the same length
        assert start + 1 <= first <= end
        scored.extend(range(first, end + 1))
    assert scored == list(range(1, n))
    assert plan[0][2] == 1  # the first window's tokens count too


def test_sliding_window_scores_tokens_with_more_context():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, n_layer=1, d_model=16, n_head=2, context=8)
    model = GPT(cfg)
    tokens = np.random.default_rng(0).integers(1, 32, size=50)
    tokens[0] = 0
    nbytes = np.ones(50, dtype=np.int64)
    nbytes[0] = 0
    full = evaluate(model, tokens, nbytes, 8, progress=False)
    slide = evaluate(model, tokens, nbytes, 8, stride=2, progress=False)
    assert full.tokens == slide.tokens == 49 and full.bytes == slide.bytes == 49
    assert full.bpb == pytest.approx(full.loss / math.log(2))


def test_scores_match_a_direct_loop():
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=32, n_layer=1, d_model=16, n_head=2, context=8)
    model = GPT(cfg).eval()
    tokens = np.random.default_rng(1).integers(0, 32, size=30)
    nbytes = np.random.default_rng(2).integers(0, 4, size=30)
    expected = 0.0
    for start, end, first in window_plan(30, 8, 3):
        logp = torch.log_softmax(model(torch.tensor(tokens[start:end])[None]), -1)[0]
        for j in range(first, end + 1):
            expected -= logp[j - start - 1, tokens[j]].item()
    res = evaluate(model, tokens, nbytes, 8, stride=3, batch_size=2, progress=False)
    assert res.loss * res.tokens == pytest.approx(expected, rel=1e-5)
    assert res.bytes == nbytes[1:].sum()


def test_prefix_limit():
    cfg = ModelConfig(vocab_size=32, n_layer=1, d_model=16, n_head=2, context=8)
    model = GPT(cfg)
    tokens = np.zeros(100, dtype=np.int64)
    res = evaluate(model, tokens, np.ones(100, dtype=np.int64), 8, max_tokens=20, progress=False)
    assert res.tokens == 20 and res.bytes == 20
