"""One writer per run folder: a second process cannot train into a folder being trained into, and the lock
dies with its holder, however it ends."""

import os
import signal
import subprocess
import sys

import pytest

from conftest import TINY_RUN, assert_one_line_error, cli
from lmgolf.errors import LmgolfError
from lmgolf.training.runlock import LOCK_FILE, fcntl, run_folder_lock

pytestmark = pytest.mark.skipif(fcntl is None, reason="no flock on this platform: run folders are not locked")

HOLD = """import sys, time
from lmgolf.training.runlock import run_folder_lock
with run_folder_lock(sys.argv[1]):
    print("held", flush=True)
    time.sleep(600)
"""


def holder(folder):
    """A process holding folder's lock (until killed)."""
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "held\n"
    return p


def test_a_train_into_a_folder_another_process_trains_into_is_refused_naming_it_and_nothing_is_written(
        capsys, byte_data, tmp_path):
    run = tmp_path / "run"
    p = holder(run)
    try:
        code, _, err = cli(capsys, "train", "--data", byte_data, "--out", run, "--preset", "cpu-demo", "--quiet",
                           "--max-steps", 2, *TINY_RUN)
        assert_one_line_error(code, err, str(run), f"process {p.pid} is training into this run folder")
        assert sorted(e.name for e in run.iterdir()) == [LOCK_FILE]
    finally:
        p.kill()
        p.wait()


def test_the_lock_goes_with_a_killed_holder_and_a_run_then_trains_there(capsys, byte_data, tmp_path):
    run = tmp_path / "run"
    p = holder(run)
    os.kill(p.pid, signal.SIGKILL)
    p.wait()
    code, _, err = cli(capsys, "train", "--data", byte_data, "--out", run, "--preset", "cpu-demo", "--quiet",
                       "--max-steps", 2, *TINY_RUN)
    assert code == 0, err
    assert (run / "summary.json").exists() and (run / LOCK_FILE).read_text() == f"{os.getpid()}\n"
    code, _, err = cli(capsys, "train", "--data", byte_data, "--out", run, "--resume", "--quiet",  # released at the end
                       "--max-steps", 3)
    assert code == 0, err


def test_the_lock_is_exclusive_within_one_process_too_and_free_again_after_an_error(tmp_path):
    with run_folder_lock(tmp_path / "run"):
        with pytest.raises(LmgolfError, match=f"process {os.getpid()} is training into this run folder"):
            with run_folder_lock(tmp_path / "run"):
                pass
    with pytest.raises(KeyboardInterrupt):
        with run_folder_lock(tmp_path / "run"):
            raise KeyboardInterrupt
    with run_folder_lock(tmp_path / "run"):
        pass
