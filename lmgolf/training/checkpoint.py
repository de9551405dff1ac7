"""Checkpoints: safetensors weights and optimizer tensors plus a JSON state, written atomically.

Layout of `RUN/checkpoint/`:
  model.safetensors      the weights
  optimizer.safetensors  every tensor of the optimizers' state, flattened to `opt{i}.{param}.{key}`
  state.json             config, step, elapsed training seconds, optimizer scalars and hyperparameters,
                         and the sha256 of both tensor files (verified on load)
The folder is written as `checkpoint.tmp/` and swapped in by rename, so a crash leaves the last
complete checkpoint in place. Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmgolf.config import Config
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT
from lmgolf.runfiles import atomic_write_text, sha256_file

CHECKPOINT_DIR = "checkpoint"


def save_checkpoint(run_dir: str | Path, model: GPT, optimizers: list[torch.optim.Optimizer], cfg: Config,
                    step: int, elapsed: float, extra: dict | None = None) -> Path:
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / CHECKPOINT_DIR, run_dir / f"{CHECKPOINT_DIR}.tmp", run_dir / f"{CHECKPOINT_DIR}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    save_file(weights, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizers(optimizers)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    state = {
        "config": cfg.to_dict(), "step": step, "elapsed": elapsed, "optimizers": opt_meta,
        "rng": {"torch": torch.get_rng_state().tolist()}, "extra": extra or {},
        "sha256": {name: sha256_file(tmp / name) for name in ("model.safetensors", "optimizer.safetensors")},
    }
    atomic_write_text(tmp / "state.json", json.dumps(state))
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def read_state(run_dir: str | Path) -> dict:
    path = Path(run_dir) / CHECKPOINT_DIR / "state.json"
    if not path.is_file():
        raise LmgolfError(f"{path}: no checkpoint here")
    try:
        state = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmgolfError(f"{path}: corrupt checkpoint state ({e.__class__.__name__})") from None
    for field in ("config", "step", "elapsed", "optimizers", "sha256"):
        if field not in state:
            raise LmgolfError(f"{path}: corrupt checkpoint state, field {field!r} missing")
    return state


def _load_verified(path: Path, expected_sha: str) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise LmgolfError(f"{path}: missing checkpoint file")
    if sha256_file(path) != expected_sha:
        raise LmgolfError(f"{path}: checksum mismatch, the file is corrupt")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise LmgolfError(f"{path}: unreadable safetensors file ({e})") from None


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Config]:
    """The model of a run folder's last checkpoint, in eval mode."""
    state = read_state(run_dir)
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    cfg = Config.from_dict(state["config"], source=str(ckpt / "state.json"))
    model = GPT(cfg.model)
    weights = _load_verified(ckpt / "model.safetensors", state["sha256"]["model.safetensors"])
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise LmgolfError(f"{ckpt / 'model.safetensors'}: weights do not fit the config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), cfg


def restore_training(run_dir: str | Path, model: GPT, optimizers: list[torch.optim.Optimizer]) -> dict:
    """Loads weights, optimizer state and RNG into live objects; returns the state dict (step, elapsed...)."""
    state = read_state(run_dir)
    ckpt = Path(run_dir) / CHECKPOINT_DIR
    weights = _load_verified(ckpt / "model.safetensors", state["sha256"]["model.safetensors"])
    model.load_state_dict(weights)
    tensors = _load_verified(ckpt / "optimizer.safetensors", state["sha256"]["optimizer.safetensors"])
    _unflatten_optimizers(optimizers, tensors, state["optimizers"])
    torch.set_rng_state(torch.tensor(state["rng"]["torch"], dtype=torch.uint8))
    return state


def _flatten_optimizers(optimizers) -> tuple[dict[str, torch.Tensor], list[dict]]:
    tensors, meta = {}, []
    for i, opt in enumerate(optimizers):
        sd = opt.state_dict()
        scalars = {}
        for pid, pstate in sd["state"].items():
            for key, value in pstate.items():
                if torch.is_tensor(value):
                    tensors[f"opt{i}.{pid}.{key}"] = value.detach().contiguous().cpu()
                else:
                    scalars[f"{pid}.{key}"] = value
        meta.append({"param_groups": sd["param_groups"], "scalars": scalars})
    return tensors, meta


def _unflatten_optimizers(optimizers, tensors: dict[str, torch.Tensor], meta: list[dict]) -> None:
    if len(meta) != len(optimizers):
        raise LmgolfError(f"checkpoint has {len(meta)} optimizers, the config builds {len(optimizers)}")
    for i, (opt, m) in enumerate(zip(optimizers, meta)):
        state: dict[int, dict] = {}
        for name, value in tensors.items():
            prefix, pid, key = name.split(".", 2)
            if prefix == f"opt{i}":
                state.setdefault(int(pid), {})[key] = value
        for name, value in m["scalars"].items():
            pid, key = name.split(".", 1)
            state.setdefault(int(pid), {})[key] = value
        try:
            opt.load_state_dict({"state": state, "param_groups": m["param_groups"]})
        except ValueError as e:  # e.g. a checkpoint written when lmgolf.params gave some parameters other roles
            raise LmgolfError(f"checkpoint optimizer {i}: its parameter groups do not fit the optimizers this "
                              f"model builds ({e})") from None
