"""The curriculum (train.curriculum, docs/training.md "Curriculum"): windows from the easiest documents first, as
the virtual stream of documents sorted by score, widening linearly back to the uniform sampler; deterministic from
the seed, a pure function of the step (so resumes are exact) and shared out among ranks like the uniform draw."""

import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from conftest import interrupt_at, tiny_cfg
from lmgolf.config import ModelConfig, TrainConfig
from lmgolf.data.curriculum import DocumentOrder, document_bounds, length_scores
from lmgolf.data.loader import WindowSampler
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT
from lmgolf.training.checkpoint import load_model
from lmgolf.training.doc_scores import loss_scores
from lmgolf.training.resume import resumed_config
from lmgolf.training.trainer import train

pytestmark = pytest.mark.usefixtures("one_thread")

BOS = 0


def stream(n_docs=100, seed=0):
    """BOS-delimited documents of 2..40 tokens; document d's tokens (after its BOS) are all d + 1."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(2, 41, size=n_docs)
    return np.concatenate([[BOS] + [d + 1] * (n - 1) for d, n in enumerate(lengths)]), lengths


def windows(sampler, step, micro_batch, accum_steps, seq_len, fraction):
    rows = []
    for micro in range(accum_steps):
        x, y = sampler.batch(step, micro, micro_batch, accum_steps, seq_len, fraction)
        rows += torch.cat([x, y[:, -1:]], dim=1).tolist()
    return rows


def same_weights(a, b):
    wa, wb = load_model(a)[0].state_dict(), load_model(b)[0].state_dict()
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def test_documents_split_at_each_bos():
    starts, ends = document_bounds(np.array([0, 5, 5, 0, 7, 0]), BOS)
    assert starts.tolist() == [0, 3, 5] and ends.tolist() == [3, 5, 6]
    starts, ends = document_bounds(np.array([4, 4, 0, 7]), BOS)  # a stream that starts mid-document
    assert starts.tolist() == [0, 2] and ends.tolist() == [2, 4]
    assert length_scores(np.array([0, 5, 5, 0, 7, 0]), BOS).tolist() == [3, 2, 1]


def test_the_quantile_grows_linearly_to_one_at_curriculum_end():
    tokens, lengths = stream()
    order = DocumentOrder(tokens, BOS, lengths.astype(float), start_quantile=0.2, end=0.5)
    assert [order.quantile(f) for f in (0, 0.125, 0.25, 0.5, 0.9)] == pytest.approx([0.2, 0.4, 0.6, 1, 1])


@pytest.mark.parametrize("fraction, eligible", [(0.0, 20), (0.25, 60)])
def test_windows_are_slices_of_the_virtual_stream_of_the_easiest_documents(fraction, eligible):
    tokens, lengths = stream()
    order = DocumentOrder(tokens, BOS, length_scores(tokens, BOS), start_quantile=0.2, end=0.5)
    sampler = WindowSampler(tokens, 16, seed=1, order=order)
    easiest = np.argsort(lengths, kind="stable")[:eligible]  # shortest first, ties in stream order
    starts, ends = document_bounds(tokens, BOS)
    virtual = np.concatenate([tokens[starts[d]:ends[d]] for d in easiest])
    for step in range(5):
        got = sampler.starts(step, 0, 8, 1, 8, fraction)
        assert got.max() + 9 <= len(virtual)
        x, y = sampler.batch(step, 0, 8, 1, 8, fraction)
        for row, s in zip(torch.cat([x, y[:, -1:]], 1).numpy(), got):
            assert np.array_equal(row, virtual[s:s + 9])
        assert set(np.unique(x.numpy())) - {BOS} <= set((easiest + 1).tolist())


def test_from_curriculum_end_on_the_batches_are_the_uniform_samplers():
    tokens, lengths = stream()
    order = DocumentOrder(tokens, BOS, lengths.astype(float), 0.2, 0.5)
    curriculum, uniform = WindowSampler(tokens, 16, 3, order=order), WindowSampler(tokens, 16, 3)
    for step, fraction in ((4, 0.5), (9, 0.8)):
        assert torch.equal(curriculum.batch(step, 1, 4, 2, 16, fraction)[0], uniform.batch(step, 1, 4, 2, 16)[0])
    assert not torch.equal(curriculum.batch(4, 0, 4, 1, 16, 0.1)[0], uniform.batch(4, 0, 4, 1, 16)[0])


def test_deterministic_from_the_seed_and_a_pure_function_of_the_step():
    tokens, lengths = stream()
    order = DocumentOrder(tokens, BOS, lengths.astype(float), 0.2, 0.5)
    first = [WindowSampler(tokens, 16, 5, order=order).batch(s, 0, 4, 1, 16, 0.1)[0] for s in range(4)]
    fresh = WindowSampler(tokens, 16, 5, order=order)
    assert torch.equal(fresh.batch(3, 0, 4, 1, 16, 0.1)[0], first[3])  # no state carried from earlier steps
    assert not torch.equal(WindowSampler(tokens, 16, 6, order=order).batch(3, 0, 4, 1, 16, 0.1)[0], first[3])


def test_ranks_of_world_two_together_see_the_single_process_batch():
    tokens, lengths = stream()
    order = DocumentOrder(tokens, BOS, lengths.astype(float), 0.2, 0.5)
    one = windows(WindowSampler(tokens, 16, 7, order=order), 2, 3, 4, 12, 0.2)
    ranks = [windows(WindowSampler(tokens, 16, 7, rank=r, world_size=2, order=order), 2, 3, 2, 12, 0.2)
             for r in range(2)]
    assert ranks[0] != ranks[1] and sorted(ranks[0] + ranks[1]) == sorted(one)


def test_a_small_eligible_share_still_holds_one_window():
    tokens, lengths = stream(n_docs=30)
    order = DocumentOrder(tokens, BOS, lengths.astype(float), start_quantile=0.01, end=0.5)
    x, _ = WindowSampler(tokens, 64, 0, order=order).batch(0, 0, 4, 1, 64, 0.0)
    assert x.shape == (4, 64)


def test_loss_scores_equal_each_documents_own_mean_cross_entropy():
    tokens, _ = stream(n_docs=12)
    tokens = tokens % 50  # docs of at most 40 tokens: each fits one window of the model's context
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, n_layer=1, d_model=32, n_head=2, context=48)).eval()
    scores = loss_scores(model, tokens, BOS, "cpu", torch.float32)
    starts, ends = document_bounds(tokens, BOS)
    with torch.no_grad():
        for d, (s, e) in enumerate(zip(starts, ends)):
            doc = torch.from_numpy(tokens[s:e].astype(np.int64))[None]
            expected = F.cross_entropy(model(doc[:, :-1])[0], doc[0, 1:]).item()
            assert scores[d] == pytest.approx(expected, rel=1e-5)


def test_the_ranks_shares_of_the_scoring_windows_sum_to_the_one_process_scores(monkeypatch):
    """Under torchrun each process scores every world_size-th window (documents longer than the context take
    several) and the per-token nats are all-reduced: with the collective standing by, the two ranks' partial
    scores add up to the one-process scores, so every rank sorts the documents the same way."""
    tokens, _ = stream(n_docs=12)
    tokens = tokens % 50
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=50, n_layer=1, d_model=32, n_head=2, context=16)).eval()
    single = loss_scores(model, tokens, BOS, "cpu", torch.float32)
    monkeypatch.setattr(torch.distributed, "all_reduce", lambda tensor, *args, **kwargs: None)
    shares = [loss_scores(model, tokens, BOS, "cpu", torch.float32, rank, 2) for rank in range(2)]
    assert np.any((shares[0] > 0) & (shares[1] > 0))  # some documents (over 16 tokens) are split between the ranks
    assert np.allclose(shares[0] + shares[1], single, rtol=1e-6, atol=0)


@pytest.mark.parametrize("fields, fragment", [
    ({"curriculum": "hard"}, "config field train.curriculum: 'hard' is not one of none, length, loss"),
    ({"curriculum": "loss"}, "train.curriculum and train.curriculum_model"),
    ({"curriculum_model": "runs/ref"}, "train.curriculum and train.curriculum_model"),
    ({"curriculum_start_quantile": 0.0}, "config field train.curriculum_start_quantile"),
    ({"curriculum_end": 1.5}, "config field train.curriculum_end"),
])
def test_bad_curriculum_fields_are_one_line_errors(fields, fragment):
    with pytest.raises(LmgolfError) as e:
        TrainConfig(**fields).validate()
    assert fragment in str(e.value) and "\n" not in str(e.value)


def test_length_curriculum_run_resumes_bitwise_and_differs_from_uniform(byte_data, tmp_path):
    cfg = lambda *extra: tiny_cfg("train.max_steps=6", "train.time_budget=0", "train.checkpoint_every=2",  # noqa: E731
                                  "train.curriculum=length", "train.curriculum_end=0.8", *extra)
    train(cfg(), byte_data, tmp_path / "full", progress=False)
    interrupt_at(3, cfg(), byte_data, tmp_path / "cut")
    train(resumed_config(tmp_path / "cut", []), byte_data, tmp_path / "cut", resume=True, progress=False)
    assert same_weights(tmp_path / "cut", tmp_path / "full")
    train(cfg("train.curriculum=none"), byte_data, tmp_path / "uniform", progress=False)
    assert not same_weights(tmp_path / "uniform", tmp_path / "full")


@pytest.fixture(scope="module")
def reference_run(byte_data, tmp_path_factory):
    run = tmp_path_factory.mktemp("reference") / "run"
    train(tiny_cfg("train.max_steps=2"), byte_data, run, progress=False)
    return run


@pytest.fixture
def fake_clock(monkeypatch):
    """Every reading of the trainer's clock is 0.5 s after the last: a step, and the scoring pass, take 0.5 s."""
    import itertools
    import lmgolf.training.trainer as trainer
    ticks = itertools.count(0.0, 0.5)
    monkeypatch.setattr(trainer, "_now", lambda device: next(ticks))


def loss_cfg(reference_run, *extra):
    return tiny_cfg("train.curriculum=loss", f"train.curriculum_model={reference_run}", *extra)


def test_scoring_by_a_reference_run_counts_against_the_time_budget(byte_data, reference_run, tmp_path, fake_clock):
    summary = train(loss_cfg(reference_run, "train.time_budget=2"), byte_data, tmp_path / "run", progress=False)
    first = json.loads((tmp_path / "run" / "metrics.jsonl").read_text().splitlines()[0])
    assert first["step"] == 1 and first["elapsed"] == 1.0  # 0.5 s of scoring, then the step's 0.5 s
    assert summary["steps"] == 3 and summary["elapsed"] == 2.0  # one step fewer than without the scoring pass
    assert train(tiny_cfg("train.time_budget=2"), byte_data, tmp_path / "plain", progress=False)["steps"] == 4


def test_loss_curriculum_run_under_a_time_budget_resumes_bitwise(byte_data, reference_run, tmp_path, fake_clock):
    cfg = lambda: loss_cfg(reference_run, "train.time_budget=2.5", "train.checkpoint_every=2")  # noqa: E731
    full = train(cfg(), byte_data, tmp_path / "full", progress=False)
    interrupt_at(3, cfg(), byte_data, tmp_path / "cut")
    resumed = train(resumed_config(tmp_path / "cut", []), byte_data, tmp_path / "cut", resume=True, progress=False)
    assert resumed["steps"] == full["steps"] == 4 and resumed["elapsed"] == full["elapsed"] == 2.5
    assert same_weights(tmp_path / "cut", tmp_path / "full")


def test_a_reference_model_with_another_tokenizer_is_refused(small_corpus, reference_run, tmp_path):
    from lmgolf.data.prepare import prepare_data
    prepare_data(str(small_corpus), "char", tmp_path / "char", val_fraction=0.1, progress=False)
    with pytest.raises(LmgolfError, match="^config field train.curriculum_model: .* tokenizer fingerprint") as e:
        train(tiny_cfg("train.max_steps=1", "train.curriculum=loss", f"train.curriculum_model={reference_run}"),
              tmp_path / "char", tmp_path / "run", progress=False)
    assert "\n" not in str(e.value) and not (tmp_path / "run").exists()  # refused before the run folder is written

