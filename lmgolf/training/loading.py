"""One loader for "a trained model": a run folder (its last checkpoint) or an .lmg artifact (dequantized)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from lmgolf.config import Config
from lmgolf.data.tokenizers import Tokenizer, load_tokenizer
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT
from lmgolf.packing.artifact import load_artifact
from lmgolf.training.checkpoint import load_model


@dataclass
class Trained:
    model: GPT
    cfg: Config
    tokenizer: Tokenizer
    kind: str     # run | artifact
    info: dict    # the artifact's recorded info ({} for a run folder)


def is_trained_model(path: str | Path) -> bool:
    """Whether path looks like an artifact file or a run folder (with a checkpoint or its run.json)."""
    p = Path(path)
    return p.is_file() or (p / "run.json").is_file() or (p / "checkpoint").is_dir()


def load_trained(path: str | Path, device="cpu", what: str = "") -> Trained:
    """The model, config and tokenizer of a run folder or an artifact; `what` names the asking field in errors."""
    p = Path(path)
    if p.is_file():
        model, cfg, tokenizer, info = load_artifact(p, device=device)
        return Trained(model, cfg, tokenizer, "artifact", info)
    if p.is_dir():
        model, cfg = load_model(p, device=device)
        return Trained(model, cfg, load_tokenizer(p / "tokenizer"), "run", {})
    raise LmgolfError(f"{what + ': ' if what else ''}{path}: no such run folder or artifact")
