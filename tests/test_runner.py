"""The runner file scores an artifact on its own, with the bundled sources, and its size is the code bytes."""

import json
import subprocess
import sys

import pytest
import torch

from lmgolf.config import PackPolicy
from lmgolf.packing.artifact import load_artifact
from lmgolf.packing.writer import code_bytes, pack
from lmgolf.config import Config, ModelConfig
from lmgolf.data.folder import DataFolder
from lmgolf.eval.evaluate import evaluate
from lmgolf.model.gpt import GPT
from lmgolf.packing.runner import runner_source, write_runner


@pytest.fixture(scope="module")
def artifact(byte_data, tmp_path_factory):
    data = DataFolder(byte_data)
    cfg = Config(model=ModelConfig(vocab_size=data.vocab_size, n_layer=1, d_model=32, n_head=2, context=16,
                                   bos_id=data.bos_id))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("runner") / "model.lmg"
    pack(GPT(cfg.model), cfg, data.tokenizer(), path, PackPolicy(min_quant_numel=256, codec="lzma"))
    return path


def run(tmp_path, kind, *args):
    runner = tmp_path / f"runner_{kind}.py"
    assert write_runner(runner, kind) == runner.stat().st_size == code_bytes(kind)
    # an "installed" lmgolf that fails on import: the runner must not need one
    (tmp_path / "shadow" / "lmgolf").mkdir(parents=True)
    (tmp_path / "shadow" / "lmgolf" / "__init__.py").write_text("raise ImportError('the installed lmgolf was used')\n")
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(tmp_path / "shadow"), "HOME": str(tmp_path)}
    return subprocess.run([sys.executable, str(runner), *map(str, args)], capture_output=True, text=True,
                          cwd=tmp_path, env=env, timeout=300)


@pytest.mark.parametrize("kind", ["plain", "compressed"])
def test_runner_scores_the_artifact_like_lmgolf(kind, artifact, byte_data, tmp_path):
    done = run(tmp_path, kind, artifact, byte_data, "--max-tokens", 300)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    model, cfg, _, _ = load_artifact(artifact)
    tokens, nbytes = DataFolder(byte_data).val_tokens_and_bytes()
    expected = evaluate(model, tokens, nbytes, cfg.model.context, max_tokens=300, progress=False)
    assert result["bpb"] == pytest.approx(expected.bpb, abs=1e-9) and result["tokens"] == 300
    assert result["artifact_bytes"] == artifact.stat().st_size


def test_compressed_runner_is_smaller_and_a_stub():
    plain, compressed = runner_source("plain"), runner_source("compressed")
    assert len(compressed) < len(plain) / 2
    assert compressed.startswith("import base64,lzma\nexec(") and compressed.count("\n") == 2


def test_runner_bad_input_is_one_line_and_exit_2(artifact, tmp_path):
    done = run(tmp_path, "plain", artifact, tmp_path / "no-such-data")
    assert done.returncode == 2
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("runner: error:")
    assert "val.bin" in done.stderr
