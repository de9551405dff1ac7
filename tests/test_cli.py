"""The command line end to end, and every bad input: a one-line error, exit code 2, nothing half-written."""

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import assert_one_line_error, cli
from lmgolf.cli import main




@pytest.fixture(scope="module")
def pipeline(small_corpus, tmp_path_factory):
    """data prepare -> train -> pack, through the CLI, with a char tokenizer."""
    root = tmp_path_factory.mktemp("cli")
    assert main(["data", "prepare", "--corpus", str(small_corpus), "--tokenizer", "char", "--out", str(root / "data")]) == 0
    assert main(["train", "--preset", "cpu-demo", "--data", str(root / "data"), "--out", str(root / "run"), "--max-steps", "4",
                 "--quiet", "model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.context=32",
                 "train.batch_tokens=128", "train.micro_batch=4"]) == 0
    assert main(["pack", str(root / "run")]) == 0
    return root


def test_eval_pack_generate(pipeline, capsys):
    code, out, _ = cli(capsys, "eval", pipeline / "run", "--stride", 16, "--quiet")
    assert code == 0
    direct = json.loads(out.splitlines()[-1])
    code, out, _ = cli(capsys, "eval", pipeline / "run" / "model.lmg", "--stride", 16, "--quiet")
    assert code == 0
    packed = json.loads(out.splitlines()[-1])
    assert packed["tokens"] == direct["tokens"] and packed["bytes"] == direct["bytes"]
    assert abs(packed["bpb"] - direct["bpb"]) < 0.05
    code, out, _ = cli(capsys, "generate", pipeline / "run" / "model.lmg", "--prompt", "The ", "--max-new-tokens", 20)
    assert code == 0 and out.startswith("The ")
    code, out, _ = cli(capsys, "count", "--preset", "pg-baseline")
    assert code == 0 and "17,059,912" in out


def test_missing_corpus(capsys, tmp_path):
    code, _, err = cli(capsys, "data", "prepare", "--corpus", tmp_path / "nope.txt", "--tokenizer", "byte", "--out", tmp_path / "d")
    assert_one_line_error(code, err, "nope.txt")
    assert not (tmp_path / "d").exists()


def test_empty_corpus(capsys, tmp_path):
    (tmp_path / "empty.txt").write_text("")
    code, _, err = cli(capsys, "data", "prepare", "--corpus", tmp_path / "empty.txt", "--tokenizer", "byte", "--out", tmp_path / "d")
    assert_one_line_error(code, err, "empty.txt")
    assert not (tmp_path / "d").exists()


def test_unknown_preset(capsys, tmp_path, byte_data):
    code, _, err = cli(capsys, "train", "--preset", "gpt-17", "--data", byte_data, "--out", tmp_path / "r")
    assert_one_line_error(code, err, "unknown preset 'gpt-17'")
    assert not (tmp_path / "r").exists()


def test_unknown_config_key(capsys, tmp_path, byte_data):
    code, _, err = cli(capsys, "train", "--preset", "cpu-demo", "--data", byte_data, "--out", tmp_path / "r", "model.depth=3")
    assert_one_line_error(code, err, "model.depth")
    assert not (tmp_path / "r").exists()


def test_wrong_value_type(capsys, tmp_path, byte_data):
    code, _, err = cli(capsys, "count", "--preset", "cpu-demo", "model.n_layer=four")
    assert_one_line_error(code, err, "model.n_layer", "expected int")


def test_missing_data_folder(capsys, tmp_path):
    code, _, err = cli(capsys, "train", "--preset", "cpu-demo", "--data", tmp_path / "nodata", "--out", tmp_path / "r")
    assert_one_line_error(code, err, "nodata")
    assert not (tmp_path / "r").exists()


def _copy(src: Path, dst: Path) -> Path:
    import shutil
    shutil.copytree(src, dst)
    return dst


def test_corrupted_shard(capsys, tmp_path, byte_data):
    data = _copy(byte_data, tmp_path / "data")
    shard = data / "train.bin"
    shard.write_bytes(shard.read_bytes()[:-7])
    code, _, err = cli(capsys, "train", "--preset", "cpu-demo", "--data", data, "--out", tmp_path / "r", "--max-steps", 1)
    assert_one_line_error(code, err, "train.bin")


def test_corrupted_checkpoint(capsys, tmp_path, pipeline):
    run_dir = _copy(pipeline / "run", tmp_path / "run")
    weights = run_dir / "checkpoint" / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-5] ^= 0xFF
    weights.write_bytes(bytes(raw))
    code, _, err = cli(capsys, "eval", run_dir, "--quiet")
    assert_one_line_error(code, err, "model.safetensors", "checksum")


def test_corrupted_artifact(capsys, tmp_path, pipeline):
    artifact = tmp_path / "model.lmg"
    raw = bytearray((pipeline / "run" / "model.lmg").read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    artifact.write_bytes(bytes(raw))
    code, _, err = cli(capsys, "eval", artifact, "--data", pipeline / "data", "--quiet")
    assert_one_line_error(code, err, "model.lmg")


def test_resume_without_checkpoint(capsys, tmp_path, byte_data):
    code, _, err = cli(capsys, "train", "--data", byte_data, "--out", tmp_path / "r", "--resume")
    assert_one_line_error(code, err, "no checkpoint")


def test_pack_prints_a_group_table_and_writes_the_runner(capsys, tmp_path, pipeline):
    out_path, runner = tmp_path / "m.lmg", tmp_path / "runner.py"
    code, out, _ = cli(capsys, "pack", pipeline / "run", "--out", out_path, "--policy", "int6-emb8", "--codec", "lzma",
                       "--runner", "compressed", "--write-runner", runner, "min_quant_numel=256", "byte_shuffle=true")
    assert code == 0 and out_path.is_file()
    table = out.splitlines()
    assert table[0].split()[:3] == ["group", "parameters", "storage"] and "lzma bytes" in table[0] and "bits/param" in table[0]
    rows = {line.split()[0]: line.split() for line in table[1:] if line.split() and line.split()[0] in ("embedding", "attention", "mlp")}
    assert rows["embedding"][2] == "int8-row" and rows["mlp"][2] == "int6-row"
    assert f"code {runner.stat().st_size:,} bytes (compressed runner)" in out
    from lmgolf.packing.artifact import read_header
    header = read_header(out_path)
    assert header["codec"] == "lzma" and header["policy"]["byte_shuffle"] is True


def test_pack_refuses_over_budget_and_writes_nothing(capsys, tmp_path, pipeline):
    out_path = tmp_path / "m.lmg"
    code, _, err = cli(capsys, "pack", pipeline / "run", "--out", out_path, "--budget", 1000)
    assert_one_line_error(code, err, "not written", "OVER by")
    assert not out_path.exists() and list(tmp_path.iterdir()) == []
    assert cli(capsys, "pack", pipeline / "run", "--out", out_path, "--budget", 1000, "--allow-over-budget")[0] == 0


@pytest.mark.parametrize("argv,fragment", [
    (["--policy", "int3-everything"], "unknown packing policy"),
    (["--codec", "gzip"], "pack.codec"),
    (["clip=median"], "pack.clip"),
    (["colour=blue"], "unknown pack policy key 'colour'"),
    (["group_storage={\"mlp\": \"int9-row\"}"], "group_storage"),
    (["prune=1.5"], "pack.prune"),
])
def test_pack_bad_policy(capsys, tmp_path, pipeline, argv, fragment):
    code, _, err = cli(capsys, "pack", pipeline / "run", "--out", tmp_path / "m.lmg", *argv)
    assert_one_line_error(code, err, fragment)
    assert not (tmp_path / "m.lmg").exists()


def test_pack_with_gptq_calibrates_on_the_runs_training_data(capsys, tmp_path, pipeline):
    code, out, err = cli(capsys, "pack", pipeline / "run", "--out", tmp_path / "g.lmg", "--policy", "gptq-int4",
                         "min_quant_numel=256", "gptq_tokens=256")
    assert code == 0, err
    assert "int4-row" in out and (tmp_path / "g.lmg").is_file()
    code, _, err = cli(capsys, "pack", pipeline / "run", "--out", tmp_path / "h.lmg", "--policy", "gptq-int4",
                       "--data", tmp_path / "nowhere")
    assert_one_line_error(code, err, "nowhere")


def test_pack_to_an_unwritable_place_is_one_line(capsys, tmp_path, pipeline):
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    code, _, err = cli(capsys, "pack", pipeline / "run", "--out", blocker / "m.lmg")
    assert_one_line_error(code, err, "m.lmg", "cannot write")
    code, _, err = cli(capsys, "pack", pipeline / "run", "--out", tmp_path / "m.lmg", "--write-runner", blocker / "r.py")
    assert_one_line_error(code, err, "r.py", "cannot write")


def test_building_the_command_line_imports_no_torch():
    """`lmgolf --help` and every command's parsing stay fast: torch is imported only by what runs."""
    probe = "import sys; from lmgolf.cli import build_parser; build_parser(); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "False"
