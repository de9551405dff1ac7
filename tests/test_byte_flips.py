"""Random byte flips in the files lmgolf reads (data shards, checkpoints, artifacts) end in a clean
refusal (a one-line error, exit code 2) or an unchanged result, never a traceback."""

import json
import random
import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmgolf.cli import main

TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.context=32", "train.batch_tokens=256",
        "train.micro_batch=4", "train.dtype=fp32", "train.eval_tokens=512", "train.max_steps=2"]
FLIPS = settings(max_examples=12, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                      HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def made(byte_data, tmp_path_factory):
    """A data folder, a finished tiny run trained on it and its packed artifact, with their scores."""
    root = tmp_path_factory.mktemp("flips")
    data = root / "data"
    shutil.copytree(byte_data, data)
    assert main(["train", "--preset", "cpu-demo", "--data", str(data), "--out", str(root / "run"), "--quiet", *TINY]) == 0
    assert main(["pack", str(root / "run")]) == 0
    return root


def flipped_copy(made: Path, relative: str, seed: int, where: Path) -> Path:
    """A copy of the data folder and run with one byte of one file flipped (position and bits from seed)."""
    shutil.copytree(made, where, dirs_exist_ok=True)
    path = where / relative
    data = bytearray(path.read_bytes())
    rng = random.Random(seed)
    data[rng.randrange(len(data))] ^= rng.randrange(1, 256)
    path.write_bytes(bytes(data))
    return where


def score(capsys, *args) -> tuple[int, dict | None, str]:
    code = main(["eval", *args, "--quiet"])  # raises on a traceback: the test fails
    out, err = capsys.readouterr()
    lines = [line for line in out.splitlines() if line.startswith("{")]
    return code, json.loads(lines[-1]) if code == 0 and lines else None, err


def assert_refused_or_unchanged(code, result, err, expected):
    assert code in (0, 2)
    if code == 2:
        assert err.startswith("lmgolf: error: ") and err.strip().count("\n") == 0
    else:
        assert result["bpb"] == expected["bpb"]


@pytest.fixture(scope="module")
def expected(made):
    import io
    from contextlib import redirect_stdout
    scores = {}
    for target in ("run", "run/model.lmg"):
        buffer = io.StringIO()
        with redirect_stdout(buffer):
            assert main(["eval", str(made / target), "--data", str(made / "data"), "--quiet"]) == 0
        scores[target] = json.loads(buffer.getvalue().splitlines()[-1])
    return scores


@FLIPS
@given(file=st.sampled_from(["data/val.bin", "data/val_bytes.bin", "data/meta.json", "run/checkpoint/model.safetensors",
                             "run/checkpoint/state.json"]), seed=st.integers(0, 2**32))
def test_a_flipped_shard_or_checkpoint_file_is_refused_or_scores_the_same(made, expected, capsys, file, seed):
    with tempfile.TemporaryDirectory() as tmp:
        where = flipped_copy(made, file, seed, Path(tmp))
        code, result, err = score(capsys, str(where / "run"), "--data", str(where / "data"))
        assert_refused_or_unchanged(code, result, err, expected["run"])


@FLIPS
@given(seed=st.integers(0, 2**32))
def test_a_flipped_artifact_is_refused_or_scores_the_same(made, expected, capsys, seed):
    with tempfile.TemporaryDirectory() as tmp:
        where = flipped_copy(made, "run/model.lmg", seed, Path(tmp))
        code, result, err = score(capsys, str(where / "run" / "model.lmg"), "--data", str(where / "data"))
        assert_refused_or_unchanged(code, result, err, expected["run/model.lmg"])
