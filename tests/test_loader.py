import numpy as np
import pytest
import torch

from lmgolf.errors import LmgolfError
from lmgolf.data.loader import WindowSampler
from lmgolf.data.shards import read_shard, write_shard

FINGERPRINT = "ab" * 32


@pytest.fixture(scope="module")
def tokens(tmp_path_factory):
    path = tmp_path_factory.mktemp("loader") / "train.bin"
    write_shard(path, np.arange(10_000) % 50_000, FINGERPRINT)
    return read_shard(path)


def windows_of(sampler, step, micro_batch, accum_steps):
    """Every (x, y) row this process sees during one step."""
    rows = []
    for micro in range(accum_steps):
        x, y = sampler.batch(step, micro, micro_batch, accum_steps)
        rows += [tuple(row) for row in torch.cat([x, y[:, -1:]], dim=1).tolist()]
    return rows


def test_shapes_dtypes_and_shift(tokens):
    x, y = WindowSampler(tokens, 16, seed=1).batch(0, 0, micro_batch=4, accum_steps=1)
    assert x.shape == y.shape == (4, 16) and x.dtype == y.dtype == torch.int64
    assert torch.equal(x[:, 1:], y[:, :-1])
    # tokens are consecutive integers, so each row is a contiguous window
    assert torch.equal(x[:, 1:] - x[:, :-1], torch.ones(4, 15, dtype=torch.int64))


def test_deterministic_and_resumable(tokens):
    first = WindowSampler(tokens, 8, seed=3)
    straight = [first.batch(step, 0, 2, 1) for step in range(5)]
    resumed = WindowSampler(tokens, 8, seed=3)
    x, y = resumed.batch(4, 0, 2, 1)
    assert torch.equal(x, straight[4][0]) and torch.equal(y, straight[4][1])
    assert torch.equal(first.batch(2, 0, 2, 1)[0], straight[2][0])
    assert not torch.equal(straight[0][0], straight[1][0])
    assert not torch.equal(WindowSampler(tokens, 8, seed=4).batch(4, 0, 2, 1)[0], x)


def test_ranks_are_disjoint_and_union_matches_single_process(tokens):
    step, micro_batch = 7, 3
    one_process = windows_of(WindowSampler(tokens, 8, seed=5), step, micro_batch, accum_steps=4)
    two_ranks = [windows_of(WindowSampler(tokens, 8, seed=5, rank=r, world_size=2), step, micro_batch, 2)
                 for r in range(2)]
    four_ranks = [windows_of(WindowSampler(tokens, 8, seed=5, rank=r, world_size=4), step, micro_batch, 1)
                  for r in range(4)]
    assert two_ranks[0] != two_ranks[1]
    assert sorted(two_ranks[0] + two_ranks[1]) == sorted(one_process)
    assert sorted(sum(four_ranks, [])) == sorted(one_process)


def test_windows_stay_in_range():
    tokens = np.arange(11)
    sampler = WindowSampler(tokens, 10, seed=0)
    for step in range(20):
        x, y = sampler.batch(step, 0, 4, 1)
        assert torch.equal(x[0], torch.arange(10)) and torch.equal(y[0], torch.arange(1, 11))


def test_bad_arguments(tokens):
    with pytest.raises(LmgolfError, match="too few"):
        WindowSampler(np.arange(5), 5, seed=0)
    with pytest.raises(LmgolfError, match="rank"):
        WindowSampler(tokens, 8, seed=0, rank=2, world_size=2)
    with pytest.raises(LmgolfError, match="micro"):
        WindowSampler(tokens, 8, seed=0).batch(0, 2, 4, 2)
