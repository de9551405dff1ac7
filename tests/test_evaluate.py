import json
import math

import numpy as np
import pytest
import torch

from lmgolf.cli import main
from lmgolf.config import ModelConfig
from lmgolf.errors import LmgolfError
from lmgolf.eval.evaluate import best_temperature, document_spans, evaluate, fit_temperature, span_plan, window_plan
from lmgolf.model.gpt import GPT
from lmgolf.eval.ttt import LoRALinear, TTTConfig, add_lora, evaluate_ttt


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


def copy_stream(n: int, seed: int, period: int = 4, repeats: int = 6) -> np.ndarray:
    """Random 4-token patterns, each repeated 6 times: a token is predictable only from 4 tokens back."""
    rng = np.random.default_rng(seed)
    return np.concatenate([np.tile(rng.integers(1, 32, size=period), repeats) for _ in range(n // 24 + 1)])[:n]


def least_context(n: int, context: int, stride: int) -> int:
    """The fewest input tokens any target after the first window is scored with."""
    return min(j - start for start, end, first in window_plan(n, context, stride)
               for j in range(max(first, context + 1), end + 1))


def test_sliding_window_scores_tokens_with_more_context():
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=32, n_layer=1, d_model=32, n_head=2, context=8))
    train, gen = torch.from_numpy(copy_stream(20000, 1)), torch.Generator().manual_seed(0)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(150):  # learns to copy from 4 tokens back: context now matters
        x = torch.stack([train[s:s + 9] for s in torch.randint(0, len(train) - 9, (32,), generator=gen)])
        loss = torch.nn.functional.cross_entropy(model(x[:, :-1]).flatten(0, 1), x[:, 1:].flatten())
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    tokens, nbytes = copy_stream(400, 2), np.ones(400, dtype=np.int64)
    nbytes[0] = 0
    assert least_context(400, 8, 8) == 1 and least_context(400, 8, 2) == 7  # a new window's first target: 1 or 7
    full = evaluate(model, tokens, nbytes, 8, per_token=True, progress=False)
    slide = evaluate(model, tokens, nbytes, 8, stride=2, per_token=True, progress=False)
    assert full.tokens == slide.tokens == 399 and full.bytes == slide.bytes == 399
    assert np.all(full.counts == 1) and np.all(slide.counts == 1)  # every target scored exactly once
    assert slide.loss < 0.8 * full.loss  # more context, lower loss (about 1.4 against 2.3 nats)
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


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only contend


def tiny(seed=0, **fields):
    torch.manual_seed(seed)
    return GPT(ModelConfig(vocab_size=32, n_layer=1, d_model=16, n_head=2, context=8, bos_id=0, **fields)).eval()


# ---------------------------------------------------------------- document isolation


def doc_stream(n=70, seed=3, bos_at=(0, 5, 6, 20, 41, 69)):
    tokens = np.random.default_rng(seed).integers(1, 32, size=n)
    tokens[list(bos_at)] = 0
    return tokens, np.where(tokens == 0, 0, 1 + tokens % 4)


def test_documents_split_at_each_bos():
    tokens, _ = doc_stream()
    assert document_spans(tokens, 70, 0) == [(1, 5), (6, 6), (7, 20), (21, 41), (42, 69)]
    assert document_spans(tokens, 30, 0) == [(1, 5), (6, 6), (7, 20), (21, 29)]
    no_leading_bos = np.array([3, 4, 0, 5])
    assert document_spans(no_leading_bos, 4, 0) == [(1, 2), (3, 3)]


@pytest.mark.parametrize("masked", [False, True])
def test_document_mode_matches_a_direct_per_document_loop(masked):
    model = tiny(doc_mask=masked, bigram_buckets=8 if masked else 0, bigram_dim=4)
    tokens, nbytes = doc_stream()
    expected = np.zeros(69)
    bos = [p for p in range(1, 70) if tokens[p] == 0] + [69]
    for a, b in zip([0] + bos[:-1], bos):  # document [a, b]: inputs a..b-1, targets a+1..b
        for k in range(a, b, 8):  # non-overlapping windows of at most 8 inputs, never before a
            x = torch.tensor(tokens[k:min(k + 8, b)])[None]
            logp = torch.log_softmax(model(x).double(), -1)[0]
            for i in range(x.size(1)):
                expected[k + i] = -logp[i, tokens[k + i + 1]].item()
    res = evaluate(model, tokens, nbytes, 8, docs=True, per_token=True, progress=False)
    np.testing.assert_allclose(res.nats, expected, rtol=1e-5, atol=1e-6)
    assert res.mode == "docs" and res.docs and res.bytes == nbytes[1:].sum() and np.all(res.counts == 1)


def test_document_mode_batching_is_exact_for_any_stride():
    model = tiny(1)
    tokens, nbytes = doc_stream()
    for stride in (1, 3, 8):
        direct = np.zeros(69)
        for first, last in document_spans(tokens, 70, 0):
            for s, e, f in span_plan(first, last, 8, stride, floor=first - 1):
                logp = torch.log_softmax(model(torch.tensor(tokens[s:e])[None]), -1)[0]
                for j in range(f, e + 1):
                    direct[j - 1] = -logp[j - s - 1, tokens[j]].item()
        for batch_size in (1, 64):
            res = evaluate(model, tokens, nbytes, 8, stride=stride, docs=True, batch_size=batch_size, per_token=True,
                           progress=False)
            np.testing.assert_allclose(res.nats, direct, rtol=1e-5, atol=1e-6)


def test_no_context_crosses_a_document_start():
    model = tiny(2)
    tokens, nbytes = doc_stream()
    other = tokens.copy()
    other[22:41] = np.random.default_rng(9).integers(1, 32, size=19)  # the inside of document [20, 41]
    a = evaluate(model, tokens, nbytes, 8, stride=2, docs=True, per_token=True, progress=False)
    b = evaluate(model, other, nbytes, 8, stride=2, docs=True, per_token=True, progress=False)
    assert np.array_equal(a.nats[41:], b.nats[41:])  # targets 42.. (the next document) do not see it
    assert not np.array_equal(a.nats[:41], b.nats[:41])


def test_document_mode_needs_a_bos_id():
    model = GPT(ModelConfig(vocab_size=32, n_layer=1, d_model=16, n_head=2, context=8))
    tokens, nbytes = doc_stream()
    with pytest.raises(LmgolfError, match="BOS"):
        evaluate(model, tokens, nbytes, 8, docs=True, progress=False)
    assert evaluate(model, tokens, nbytes, 8, docs=True, bos_id=0, progress=False).tokens == 69


# ---------------------------------------------------------------- test-time training


def test_ttt_without_steps_is_plain_scoring():
    model = tiny(3)
    tokens, nbytes = doc_stream()
    for docs, stride in ((False, 4), (False, 8), (True, 2)):
        plain = evaluate(model, tokens, nbytes, 8, stride=stride, docs=docs, per_token=True, progress=False)
        res = evaluate_ttt(model, tokens, nbytes, 8, TTTConfig(steps=0, docs=docs), stride=stride, per_token=True,
                           progress=False)
        np.testing.assert_allclose(res.nats, plain.nats, rtol=1e-6, atol=1e-6)
        assert res.mode == "ttt" and res.ttt["steps"] == 0 and np.all(res.counts == 1)


@pytest.mark.parametrize("optimizer,lr,gain", [("sgd", 0.5, 0.3), ("lora", 2.0, 0.05)])
def test_ttt_learns_a_repeating_text_and_leaves_the_model_alone(optimizer, lr, gain):
    model = tiny(4)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    tokens = np.tile(np.array([0, 7, 3, 9, 12, 5, 21]), 12)
    nbytes = np.ones_like(tokens)
    plain = evaluate(model, tokens, nbytes, 8, progress=False)
    cfg = TTTConfig(steps=2, lr=lr, optimizer=optimizer, lora_rank=4)
    first = evaluate_ttt(model, tokens, nbytes, 8, cfg, per_token=True, progress=False)
    again = evaluate_ttt(model, tokens, nbytes, 8, cfg, per_token=True, progress=False)
    assert first.loss < plain.loss - gain  # a random tiny model: adapters alone learn slowly
    assert np.array_equal(first.nats, again.nats)  # deterministic
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert not any(isinstance(m, LoRALinear) for m in model.modules())


def test_ttt_reset_restarts_every_document_from_the_model():
    model = tiny(5)
    tokens, nbytes = doc_stream()
    plain = evaluate_ttt(model, tokens, nbytes, 8, TTTConfig(steps=0, docs=True), per_token=True, progress=False)
    reset = evaluate_ttt(model, tokens, nbytes, 8, TTTConfig(steps=3, lr=0.5, docs=True, reset_docs=True),
                         per_token=True, progress=False)
    kept = evaluate_ttt(model, tokens, nbytes, 8, TTTConfig(steps=3, lr=0.5, docs=True), per_token=True, progress=False)
    for first, last in document_spans(tokens, 70, 0):  # each document's first chunk: the untouched model
        chunk = slice(first - 1, min(first + 7, last))
        np.testing.assert_allclose(reset.nats[chunk], plain.nats[chunk], rtol=1e-6, atol=1e-6)
    assert np.abs(kept.nats[20:28] - plain.nats[20:28]).max() > 1e-3  # without reset, it carries over


def test_lora_starts_as_the_identity_and_trains_only_adapters():
    model = tiny(6, mlp="gelu")
    x = torch.tensor([[0, 4, 9, 2, 31]])
    params = add_lora(model, rank=2, alpha=4, seed=0)
    wrapped = [m for m in model.modules() if isinstance(m, LoRALinear)]
    assert len(wrapped) == 6 and len(params) == 12  # q, k, v, proj; up, proj
    assert all(p.requires_grad for p in params)
    assert not any(p.requires_grad for n, p in model.named_parameters() if not n.endswith((".A", ".B")))
    torch.testing.assert_close(model(x), tiny(6, mlp="gelu")(x))


# ---------------------------------------------------------------- temperature


def test_best_temperature_recovers_the_sampling_temperature():
    gen = torch.Generator().manual_seed(0)
    logits = torch.randn(6000, 32, generator=gen) * 3
    targets = torch.multinomial(torch.softmax(logits / 2.0, -1), 1, generator=gen)[:, 0]
    assert best_temperature(logits, targets) == pytest.approx(2.0, rel=0.06)


def test_temperature_scoring():
    model = tiny(7)
    tokens, nbytes = doc_stream()
    plain = evaluate(model, tokens, nbytes, 8, per_token=True, progress=False)
    same = evaluate(model, tokens, nbytes, 8, temperature=1.0, per_token=True, progress=False)
    np.testing.assert_allclose(same.nats, plain.nats, rtol=1e-6)
    train = np.tile(np.array([0, 7, 3, 9, 12, 5, 21]), 30)  # predictable: a sharper distribution fits it
    t = fit_temperature(model, train, 8, fit_tokens=64)
    res = evaluate(model, tokens, nbytes, 8, temperature=t, progress=False)
    assert res.mode == "temperature" and res.temperature == t and 0.05 <= t <= 20
    assert json.loads(json.dumps(res.as_dict()))["temperature"] == t
    assert "nats" not in res.as_dict()


# ---------------------------------------------------------------- the command line


@pytest.fixture(scope="module")
def artifact(byte_data, tmp_path_factory):
    try:
        from lmgolf.packing.writer import pack
    except ImportError:  # older layout: pack() lived in lmgolf.packing.artifact
        from lmgolf.packing.writer import pack
    from lmgolf.config import Config
    from lmgolf.data.tokenizers import load_tokenizer
    torch.manual_seed(0)
    cfg = Config(model=ModelConfig(vocab_size=257, n_layer=1, d_model=16, n_head=2, context=16, bos_id=256))
    path = tmp_path_factory.mktemp("eval") / "model.lmg"
    pack(GPT(cfg.model), cfg, load_tokenizer(byte_data / "tokenizer"), path)
    return path


def eval_cli(capsys, artifact, byte_data, *flags):
    code = main(["eval", str(artifact), "--data", str(byte_data), "--quiet", "--max-tokens", "300", *map(str, flags)])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize("flags", [("--mode", "docs", "--stride", "4"),
                                   ("--mode", "ttt", "--ttt-steps", "1", "--ttt-optimizer", "lora", "--lora-rank", "2",
                                    "--ttt-reset-docs", "--docs", "--ttt-lr", "0.01"),
                                   ("--mode", "temperature", "--fit-tokens", "64"),
                                   ("--baselines", "--baseline-prefix-bytes", "2000")])
def test_eval_modes_from_the_command_line(capsys, artifact, byte_data, flags):
    code, out, err = eval_cli(capsys, artifact, byte_data, *flags)
    assert code == 0, err
    summary = json.loads(out.splitlines()[-1])
    assert summary["tokens"] == 300 and summary["mode"] == (flags[1] if flags[0] == "--mode" else "window")
    assert summary["total_bpb"] == pytest.approx(
        (summary["artifact_bytes"] * 8 + summary["bpb"] * summary["bytes"]) / summary["bytes"])
    assert "total description length" in out
    if "--baselines" in flags:
        report = summary["baselines"]
        assert report["exact_text"] and report["val_bytes"] == summary["bytes"] and report["prefix_bytes"] == 2000
        assert set(report["bpb"]) == {"zlib", "lzma", "bz2", "zstd"} and "zstd" in out


@pytest.mark.parametrize("flags,fragment", [
    (("--mode", "ttt", "--ttt-steps", "-1"), "ttt steps"),
    (("--mode", "ttt", "--ttt-chunk", "0"), "ttt chunk"),
    (("--mode", "ttt", "--ttt-lr", "-0.1"), "ttt lr"),
    (("--mode", "ttt", "--ttt-lr", "nan"), "ttt lr"),
    (("--mode", "ttt", "--ttt-momentum", "1"), "momentum"),
    (("--mode", "ttt", "--ttt-optimizer", "lora", "--lora-rank", "0"), "lora rank"),
    (("--mode", "ttt", "--lora-rank", "4"), "--ttt-optimizer lora"),
    (("--ttt-steps", "2",), "needs --mode ttt"),
    (("--mode", "docs", "--ttt-reset-docs"), "needs --mode ttt"),
    (("--stride", "17"), "--stride"),
    (("--mode", "docs", "--stride", "0"), "--stride"),
    (("--max-tokens", "0"), "--max-tokens"),
    (("--mode", "window", "--docs"), "--docs"),
    (("--fit-tokens", "10"), "--fit-tokens"),
    (("--baseline-prefix-bytes", "10"), "--baselines"),
])
def test_bad_eval_input_is_a_one_line_error(capsys, artifact, byte_data, flags, fragment):
    code, _, err = eval_cli(capsys, artifact, byte_data, *flags)
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2 and len(lines) == 1 and lines[0].startswith("lmgolf: error: "), err
    assert fragment in lines[0]
