"""Output paths never destroy: `train --out`, `pack --out` and `--write-runner` refuse, with a one-line error
(exit 2) and before anything is written, to replace what lmgolf did not write; temp files and folders that
a killed `pack` or `data prepare` left are removed by the next successful run of the same command."""

import hashlib
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import assert_one_line_error, cli
from lmgolf.cli import main

TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.context=32", "train.batch_tokens=128",
        "train.micro_batch=4"]

pytestmark = pytest.mark.usefixtures("one_thread")




def folder_hash(folder: Path) -> dict:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
            for p in sorted(folder.rglob("*"))}


def train_args(data, out):
    return ["train", "--preset", "cpu-demo", "--data", data, "--out", out, "--max-steps", 2, "--quiet", *TINY]


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


@pytest.fixture(scope="module")
def made(small_corpus, tmp_path_factory):
    """data prepare -> train -> pack through the CLI."""
    root = tmp_path_factory.mktemp("outputs")
    assert main(["data", "prepare", "--corpus", str(small_corpus), "--tokenizer", "char", "--out", str(root / "data")]) == 0
    assert main([str(a) for a in train_args(root / "data", root / "run")]) == 0
    assert main(["pack", str(root / "run")]) == 0
    return root


# ---------------------------------------------------------------- train --out


def test_train_out_onto_a_data_folder_is_refused_and_leaves_it_whole(capsys, made, tmp_path):
    data = shutil.copytree(made / "data", tmp_path / "data")
    before = folder_hash(data)
    code, _, err = cli(capsys, *train_args(data, data))
    assert_one_line_error(code, err, str(data), "not an lmgolf run folder")
    assert folder_hash(data) == before  # its tokenizer/ is still there


def test_train_out_onto_a_users_folder_is_refused_and_leaves_it_whole(capsys, made, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "config.json").write_text('{"my": "settings"}\n')
    before = folder_hash(mine)
    code, _, err = cli(capsys, *train_args(made / "data", mine))
    assert_one_line_error(code, err, str(mine), "not an lmgolf run folder", "run.json")
    assert folder_hash(mine) == before


def test_train_out_onto_a_folder_with_other_files_names_one(capsys, made, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine\n")
    before = folder_hash(mine)
    code, _, err = cli(capsys, *train_args(made / "data", mine))
    assert_one_line_error(code, err, str(mine), "'notes.txt'")
    assert folder_hash(mine) == before


def test_train_out_onto_a_run_with_a_checkpoint_is_refused(capsys, made, tmp_path):
    run_dir = shutil.copytree(made / "run", tmp_path / "run")
    before = folder_hash(run_dir)
    code, _, err = cli(capsys, *train_args(made / "data", run_dir))
    assert_one_line_error(code, err, "a run is already there")
    assert folder_hash(run_dir) == before


def test_train_out_onto_a_file_is_a_one_line_error(capsys, made, tmp_path):
    path = tmp_path / "file"
    path.write_text("mine\n")
    code, _, err = cli(capsys, *train_args(made / "data", path))
    assert_one_line_error(code, err, str(path), "not a folder")
    assert path.read_text() == "mine\n"


def test_train_out_into_an_empty_folder_or_a_run_stopped_before_its_first_checkpoint(capsys, made, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli(capsys, *train_args(made / "data", empty))[0] == 0
    shutil.rmtree(empty / "checkpoint")  # as if killed before the first checkpoint
    (empty / "summary.json").unlink()
    assert cli(capsys, *train_args(made / "data", empty))[0] == 0


# ---------------------------------------------------------------- pack --out, --write-runner


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.safetensors", "state.json", "new.lmg"])
def test_pack_out_into_the_checkpoint_is_refused(capsys, made, tmp_path, name):
    run_dir = shutil.copytree(made / "run", tmp_path / "run")
    before = folder_hash(run_dir)
    code, _, err = cli(capsys, "pack", run_dir, "--out", run_dir / "checkpoint" / name)
    assert_one_line_error(code, err, "checkpoint folder")
    assert folder_hash(run_dir) == before


def test_pack_out_onto_a_users_file_is_refused(capsys, made, tmp_path):
    path = tmp_path / "report.txt"
    path.write_text("mine\n")
    code, _, err = cli(capsys, "pack", made / "run", "--out", path)
    assert_one_line_error(code, err, str(path), "not an lmgolf artifact")
    assert path.read_text() == "mine\n"


def test_pack_out_onto_a_folder_is_a_one_line_error(capsys, made, tmp_path):
    (tmp_path / "folder").mkdir()
    code, _, err = cli(capsys, "pack", made / "run", "--out", tmp_path / "folder")
    assert_one_line_error(code, err, "is a folder")
    assert list((tmp_path / "folder").iterdir()) == []


def test_pack_out_replaces_an_earlier_artifact(capsys, made, tmp_path):
    path = tmp_path / "m.lmg"
    shutil.copy(made / "run" / "model.lmg", path)
    code, _, err = cli(capsys, "pack", made / "run", "--out", path, "--codec", "lzma")
    assert code == 0, err


def test_write_runner_onto_a_users_file_is_refused(capsys, made, tmp_path):
    path = tmp_path / "runner.py"
    path.write_text("print('my own script')\n")
    code, _, err = cli(capsys, "pack", made / "run", "--out", tmp_path / "m.lmg", "--write-runner", path)
    assert_one_line_error(code, err, str(path), "not an lmgolf runner file")
    assert path.read_text() == "print('my own script')\n"


def test_write_runner_onto_a_folder_is_a_one_line_error(capsys, made, tmp_path):
    (tmp_path / "folder").mkdir()
    code, _, err = cli(capsys, "pack", made / "run", "--out", tmp_path / "m.lmg", "--write-runner", tmp_path / "folder")
    assert_one_line_error(code, err, "is a folder")


def test_write_runner_into_the_checkpoint_is_refused(capsys, made, tmp_path):
    run_dir = shutil.copytree(made / "run", tmp_path / "run")
    target = run_dir / "checkpoint" / "model.safetensors"
    before = target.read_bytes()
    code, _, err = cli(capsys, "pack", run_dir, "--out", tmp_path / "m.lmg", "--write-runner", target)
    assert_one_line_error(code, err, "checkpoint folder")
    assert target.read_bytes() == before


@pytest.mark.parametrize("kind", ["plain", "compressed"])
def test_write_runner_replaces_an_earlier_runner_of_either_kind(capsys, made, tmp_path, kind):
    from lmgolf.packing.runner import write_runner
    path = tmp_path / "runner.py"
    write_runner(path, kind)
    code, _, err = cli(capsys, "pack", made / "run", "--out", tmp_path / "m.lmg", "--write-runner", path,
                       "--runner", "compressed" if kind == "plain" else "plain")
    assert code == 0, err


# ---------------------------------------------------------------- temp files of killed runs


def test_a_killed_pack_leaves_a_temp_file_that_the_next_pack_removes(capsys, made, tmp_path):
    """A real kill: the child process dies (os._exit) just before renaming the artifact into place."""
    out = tmp_path / "m.lmg"
    script = textwrap.dedent(f"""
        import os
        def die(*args, **kwargs):
            os._exit(9)
        os.replace = die
        from lmgolf.cli import main
        main(["pack", {str(made / "run")!r}, "--out", {str(out)!r}])
    """)
    killed = subprocess.run([sys.executable, "-c", script], capture_output=True, timeout=300,
                            env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])})
    assert killed.returncode == 9, killed.stderr
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(".m.lmg.")]
    assert len(left) == 1 and not out.exists()
    keep = tmp_path / f".m.lmg.{os.getpid()}.abcdefgh.tmp"  # a live process's write in flight is left alone
    keep.write_bytes(b"")
    other = tmp_path / ".other.lmg.1.abcdefgh.tmp"
    other.write_bytes(b"")
    assert cli(capsys, "pack", made / "run", "--out", out)[0] == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["m.lmg", keep.name, other.name])


def test_a_killed_data_prepare_leaves_folders_that_the_next_prepare_removes(capsys, small_corpus, tmp_path):
    pid = dead_pid()
    staging = tmp_path / f".data.{pid}.abcdefgh.tmp"
    (staging / "tokenizer").mkdir(parents=True)
    (staging / "train.bin").write_bytes(b"half")
    aside = tmp_path / f".data.{pid}.ijklmnop.old"
    (aside / "previous").mkdir(parents=True)
    unrelated = tmp_path / f".data2.{pid}.abcdefgh.tmp"
    unrelated.mkdir()
    code, _, err = cli(capsys, "data", "prepare", "--corpus", small_corpus, "--tokenizer", "char",
                       "--out", tmp_path / "data")
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["data", unrelated.name])



def test_a_refused_runner_path_writes_no_artifact_either(capsys, made, tmp_path):
    run_dir = shutil.copytree(made / "run", tmp_path / "run")
    (run_dir / "model.lmg").unlink(missing_ok=True)
    user = tmp_path / "notes.txt"
    user.write_text("mine\n")
    code, _, err = cli(capsys, "pack", run_dir, "--write-runner", user)
    assert_one_line_error(code, err, "notes.txt")
    assert user.read_text() == "mine\n" and not (run_dir / "model.lmg").exists()
