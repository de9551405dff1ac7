import os
import random
from pathlib import Path

import pytest
import torch

WORDS = ("the of and to in a is that for it as was with be by on not he this are or his from at which but have an "
         "they you were her she there been one all we their has would when if so no will more out up into do any "
         "time could only about than other new some what these two may first then over also after like most "
         "king queen lord castle river mountain night morning letter window garden stranger journey").split()


def make_text(n_words: int, seed: int = 0) -> str:
    rng = random.Random(seed)
    lines, line = [], []
    for i in range(n_words):
        line.append(rng.choice(WORDS))
        if rng.random() < 0.1:
            lines.append(" ".join(line).capitalize() + ".")
            line = []
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="session")
def small_corpus(tmp_path_factory) -> Path:
    """A folder of 40 small English-like documents (about 60 KB)."""
    folder = tmp_path_factory.mktemp("corpus")
    for i in range(40):
        (folder / f"doc{i:02d}.txt").write_text(make_text(300, seed=i))
    return folder


@pytest.fixture(scope="session")
def byte_data(small_corpus, tmp_path_factory) -> Path:
    from lmgolf.data.prepare import prepare_data
    out = tmp_path_factory.mktemp("data") / "byte"
    prepare_data(str(small_corpus), "byte", out, val_fraction=0.1, progress=False)
    return out


def data_dir() -> Path | None:
    value = os.environ.get("LMGOLF_DATA_DIR")
    return Path(value) if value and Path(value).is_dir() else None


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models and matrices run several times faster on one thread than on two busy ones."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def interrupt_at(step: int, cfg, data, out) -> None:
    """Trains cfg into out and interrupts the run (a KeyboardInterrupt) right after optimizer step `step`."""
    from lmgolf.training.trainer import train

    def crash(done):
        if done == step:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg, data, out, progress=False, on_step=crash)


def cli(capsys, *argv):
    """Runs the lmgolf command in this process: (exit code, stdout, stderr)."""
    from lmgolf.cli import main
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(code, err, *fragments):
    """Exit code 2 and one line `lmgolf: error: ...` holding every fragment, no traceback."""
    assert code == 2
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("lmgolf: error: "), err
    assert "Traceback" not in err and "IndexError" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# a tiny cpu-demo variant that trains in well under a second a step on one thread
TINY_RUN = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.context=32", "train.batch_tokens=256",
            "train.micro_batch=4", "train.log_every=1", "train.dtype=fp32", "train.eval_tokens=512",
            "train.compile=off"]


def tiny_cfg(*extra):
    from lmgolf.config import load_config
    return load_config("cpu-demo", TINY_RUN + list(extra))


# a 3-step run through the Python API, and its artifact (module-scoped: each test module gets its own)
TINY_API = {"model.n_layer": 1, "model.d_model": 32, "model.n_head": 2, "model.context": 32, "train.batch_tokens": 128,
            "train.micro_batch": 4, "train.dtype": "fp32", "train.log_every": 1}


@pytest.fixture(scope="module")
def api_run(byte_data, tmp_path_factory, one_thread):
    from lmgolf import api
    return api.train(tmp_path_factory.mktemp("api") / "run", preset="cpu-demo", data=byte_data, overrides=TINY_API,
                     max_steps=3, progress=False)


@pytest.fixture(scope="module")
def api_artifact(api_run):
    from lmgolf import api
    api.pack(api_run)
    return api_run.artifact
