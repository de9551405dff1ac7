"""Checkpoints: safetensors weights and optimizer tensors plus a JSON state, written atomically.

Layout of `RUN/checkpoint/`:
  model.safetensors      the weights
  optimizer.safetensors  every tensor of the optimizers' state, flattened to `opt{i}.{param}.{key}`
  averages.safetensors   the weight averages `ema.NAME`, `swa.NAME` in fp32 (only with train.ema_decay
                         or train.swa_every set, once one holds something; lmgolf.training.averaging)
  raw.safetensors        the raw trained weights, only in a finished run's final checkpoint whose
                         model.safetensors holds an average (train.export_weights=ema|swa); a resume
                         continues from these, load_model and pack read model.safetensors
  state.json             config, step, elapsed training seconds, optimizer scalars and hyperparameters,
                         and the sha256 of every tensor file (verified on load)
The folder is written as `checkpoint.tmp/` and swapped in by renames (save_checkpoint), so a crash at
any instant leaves a complete checkpoint in one of checkpoint/, checkpoint.tmp/, checkpoint.old/;
readers take the newest complete one (find_checkpoint). Nothing is unpickled on load.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from lmgolf.config import Config
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT
from lmgolf.runfiles import atomic_write_text, is_temp_name, sha256_file
from lmgolf.training.runlock import LOCK_FILE

CHECKPOINT_DIR = "checkpoint"
TMP_DIR, OLD_DIR = f"{CHECKPOINT_DIR}.tmp", f"{CHECKPOINT_DIR}.old"
CANDIDATES = (CHECKPOINT_DIR, TMP_DIR, OLD_DIR)  # in this order of preference at equal steps
TENSOR_FILES = ("model.safetensors", "optimizer.safetensors")
OPTIONAL_TENSOR_FILES = ("averages.safetensors", "raw.safetensors")  # verified when state.json lists them
# what a run folder holds (lmgolf.runfiles temp files and the lock file besides): a fresh `train --out`
# starts only in an empty folder or one with run.json and nothing but these
RUN_ENTRIES = {"config.json", "run.json", "tokenizer", "metrics.jsonl", "summary.json", "model.lmg", *CANDIDATES}
RUN_RECORD_FIELDS = ("command", "code", "libraries", "hardware")


def save_checkpoint(run_dir: str | Path, model: GPT, optimizers: list[torch.optim.Optimizer], cfg: Config,
                    step: int, elapsed: float, extra: dict | None = None,
                    averages: dict[str, torch.Tensor] | None = None,
                    exported: dict[str, torch.Tensor] | None = None) -> Path:
    """Writes the checkpoint so that, at every instant, the newest complete checkpoint of the run is
    one of checkpoint/, checkpoint.tmp/, checkpoint.old/ (what find_checkpoint picks):
      1. settle: the newest complete one is moved to checkpoint/ (whatever is there is older or broken);
      2. checkpoint.tmp/ and checkpoint.old/ (older or broken) are removed, checkpoint.tmp/ is written,
         its state.json last;
      3. checkpoint/ -> checkpoint.old/, checkpoint.tmp/ -> checkpoint/, checkpoint.old/ removed.
    averages (tensors, when any) go to averages.safetensors; exported (a state dict, when given) goes to
    model.safetensors and the model's own weights to raw.safetensors."""
    run_dir = Path(run_dir)
    final, tmp, old = run_dir / CHECKPOINT_DIR, run_dir / TMP_DIR, run_dir / OLD_DIR
    _settle(run_dir)
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)
    tmp.mkdir(parents=True)
    weights = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    files = list(TENSOR_FILES)
    if exported is not None:
        save_file({k: v.detach().contiguous().cpu() for k, v in exported.items()}, str(tmp / "model.safetensors"))
        save_file(weights, str(tmp / "raw.safetensors"))
        files.append("raw.safetensors")
    else:
        save_file(weights, str(tmp / "model.safetensors"))
    opt_tensors, opt_meta = _flatten_optimizers(optimizers)
    save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
    if averages:
        save_file(averages, str(tmp / "averages.safetensors"))
        files.append("averages.safetensors")
    state = {
        "config": cfg.to_dict(), "step": step, "elapsed": elapsed, "optimizers": opt_meta,
        "rng": {"torch": torch.get_rng_state().tolist()}, "extra": extra or {},
        "sha256": {name: sha256_file(tmp / name) for name in files},
    }
    atomic_write_text(tmp / "state.json", json.dumps(state))
    if final.exists():
        os.rename(final, old)
    os.rename(tmp, final)
    shutil.rmtree(old, ignore_errors=True)
    return final


def _settle(run_dir: Path) -> None:
    """Moves the newest complete checkpoint to checkpoint/ (left by a save that was cut short)."""
    if not any((run_dir / name).exists() for name in (TMP_DIR, OLD_DIR)):
        return  # the usual case: nothing was cut short
    try:
        newest = find_checkpoint(run_dir)
    except LmgolfError:
        return  # none complete: nothing to keep
    final = run_dir / CHECKPOINT_DIR
    if newest == final:
        return
    shutil.rmtree(final, ignore_errors=True)  # older or broken: the newest stays where it is meanwhile
    os.rename(newest, final)


def find_checkpoint(run_dir: str | Path) -> Path:
    """The newest complete (state valid, checksums verified) of checkpoint/, checkpoint.tmp/ and
    checkpoint.old/, by the step in its state; at equal steps in that order. When there is none, a
    one-line error: checkpoint/'s own when it is there but broken."""
    run_dir = Path(run_dir)
    found, errors = [], {}
    for rank, name in enumerate(CANDIDATES):
        folder = run_dir / name
        if not (folder / "state.json").is_file():
            continue
        try:
            found.append((-_parse_state(folder / "state.json")["step"], rank, folder))
        except LmgolfError as e:
            errors[name] = e
    for _, _, folder in sorted(found):  # newest first; hash only until one verifies
        state = _parse_state(folder / "state.json")
        try:
            for name in tensor_files(state):
                _verify(folder / name, state["sha256"][name])
        except LmgolfError as e:
            errors[folder.name] = e
            continue
        return folder
    if errors:
        raise errors.get(CHECKPOINT_DIR) or next(iter(errors.values()))
    raise LmgolfError(f"{run_dir / CHECKPOINT_DIR / 'state.json'}: no checkpoint here")


def tensor_files(state: dict) -> tuple[str, ...]:
    """The tensor files a (parsed) state lists: the two always there, and the optional ones it names."""
    return TENSOR_FILES + tuple(name for name in OPTIONAL_TENSOR_FILES if name in state["sha256"])


def _complete(folder: Path) -> bool:
    try:
        state = _parse_state(folder / "state.json")
        for name in tensor_files(state):
            _verify(folder / name, state["sha256"][name])
    except LmgolfError:
        return False
    return True


def has_checkpoint(run_dir: str | Path) -> bool:
    """Whether the run folder holds anything a resume could start from, or a broken checkpoint/."""
    run_dir = Path(run_dir)
    if (run_dir / CHECKPOINT_DIR).exists():
        return True
    return any(_complete(run_dir / name) for name in (TMP_DIR, OLD_DIR))


def check_out_folder(out_dir: str | Path, resume: bool) -> None:
    """Refuses, before anything is written, a `train --out` that could destroy something: a fresh run
    into a folder holding anything but an lmgolf run, or over a run that has a checkpoint; a resume
    without one."""
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise LmgolfError(f"{out_dir}: exists and is not a folder; --out names the run folder")
    if resume:
        if not has_checkpoint(out_dir):
            raise LmgolfError(f"{out_dir}: no checkpoint to resume from")
        return
    if has_checkpoint(out_dir):
        raise LmgolfError(f"{out_dir}: a run is already there; pass --resume to continue it or choose another --out")
    if not out_dir.exists():
        return
    entries = sorted(p.name for p in out_dir.iterdir() if not is_temp_name(p.name) and p.name != LOCK_FILE)
    if not entries:
        return
    unexpected = [name for name in entries if name not in RUN_ENTRIES]
    if unexpected:
        raise LmgolfError(f"{out_dir}: not an lmgolf run folder ({unexpected[0]!r} is not part of a run); "
                          f"refusing to train into it, choose an empty or new --out")
    if not is_run_record(out_dir / "run.json"):
        raise LmgolfError(f"{out_dir}: not an lmgolf run folder (no valid run.json); refusing to train into it, "
                          f"choose an empty or new --out")


def is_run_record(path: Path) -> bool:
    """Whether path is a run.json that lmgolf wrote (lmgolf.runinfo.run_record)."""
    try:
        record = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and all(k in record for k in RUN_RECORD_FIELDS) \
        and isinstance(record["code"], dict) and "lmgolf" in record["code"]


def read_state(run_dir: str | Path) -> dict:
    """The state of the run folder's newest complete checkpoint (find_checkpoint)."""
    return _parse_state(find_checkpoint(run_dir) / "state.json")


def _parse_state(path: Path) -> dict:
    if not path.is_file():
        raise LmgolfError(f"{path}: no checkpoint here")
    try:
        state = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise LmgolfError(f"{path}: corrupt checkpoint state ({e.__class__.__name__})") from None
    if not isinstance(state, dict):
        raise LmgolfError(f"{path}: corrupt checkpoint state, not a JSON object")
    for field in ("config", "step", "elapsed", "optimizers", "sha256"):
        if field not in state:
            raise LmgolfError(f"{path}: corrupt checkpoint state, field {field!r} missing")

    def bad(field: str, why: str):
        return LmgolfError(f"{path}: corrupt checkpoint state, field {field!r} {why}")

    if not isinstance(state["config"], dict):
        raise bad("config", "is not an object")
    step = state["step"]
    if not isinstance(step, int) or isinstance(step, bool) or step < 0:
        raise bad("step", f"must be a non-negative integer, not {json.dumps(step)}")
    elapsed = state["elapsed"]
    if not isinstance(elapsed, (int, float)) or isinstance(elapsed, bool) or not math.isfinite(elapsed) or elapsed < 0:
        raise bad("elapsed", f"must be a non-negative number of seconds, not {json.dumps(elapsed)}")
    sha = state["sha256"]
    if not isinstance(sha, dict):
        raise bad("sha256", "is not an object")
    for name in tensor_files(state):
        value = sha.get(name)
        if not isinstance(value, str) or len(value) != 64 or any(c not in "0123456789abcdef" for c in value):
            raise bad(f"sha256.{name}", "missing or not a sha256 hex digest")
    optimizers = state["optimizers"]
    if not isinstance(optimizers, list) or not all(
            isinstance(m, dict) and isinstance(m.get("param_groups"), list) and isinstance(m.get("scalars"), dict)
            for m in optimizers):
        raise bad("optimizers", "must be a list of {param_groups: [...], scalars: {...}}")
    extra = state.setdefault("extra", {})
    if not isinstance(extra, dict):
        raise bad("extra", "is not an object")
    qat_step = extra.get("qat_step")
    if qat_step is not None and (not isinstance(qat_step, int) or isinstance(qat_step, bool)):
        raise bad("extra.qat_step", f"must be an integer or null, not {json.dumps(qat_step)}")
    rng = state.get("rng")
    if rng is not None:
        values = rng.get("torch") if isinstance(rng, dict) else None
        if not isinstance(values, list) or len(values) != _rng_state_size() or not all(
                isinstance(v, int) and not isinstance(v, bool) and 0 <= v <= 255 for v in values):
            raise bad("rng.torch", f"must be a list of {_rng_state_size()} bytes (0-255), torch's CPU RNG state")
    return state


def _rng_state_size() -> int:
    return torch.get_rng_state().numel()


def _verify(path: Path, expected_sha: str) -> None:
    if not path.is_file():
        raise LmgolfError(f"{path}: missing checkpoint file")
    if sha256_file(path) != expected_sha:
        raise LmgolfError(f"{path}: checksum mismatch, the file is corrupt")


def _load_verified(path: Path, expected_sha: str) -> dict[str, torch.Tensor]:
    _verify(path, expected_sha)  # again: the file is read now, find_checkpoint hashed it a moment ago
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise LmgolfError(f"{path}: unreadable safetensors file ({e})") from None


def load_model(run_dir: str | Path, device: str | torch.device = "cpu") -> tuple[GPT, Config]:
    """The model of a run folder's last checkpoint, in eval mode."""
    ckpt = find_checkpoint(run_dir)
    state = _parse_state(ckpt / "state.json")
    cfg = Config.from_dict(state["config"], source=str(ckpt / "state.json"))
    model = GPT(cfg.model)
    weights = _load_verified(ckpt / "model.safetensors", state["sha256"]["model.safetensors"])
    try:
        model.load_state_dict(weights)
    except RuntimeError as e:
        raise LmgolfError(f"{ckpt / 'model.safetensors'}: weights do not fit the config ({str(e).splitlines()[0]})") from None
    return model.to(device).eval(), cfg


def restore_training(run_dir: str | Path, model: GPT, optimizers: list[torch.optim.Optimizer],
                     averages=None) -> dict:
    """Loads weights (the raw ones: raw.safetensors when the checkpoint has it), optimizer state, RNG and,
    into averages (lmgolf.training.averaging.WeightAverages), the weight averages into live objects;
    returns the state dict (step, elapsed...)."""
    ckpt = find_checkpoint(run_dir)
    state = _parse_state(ckpt / "state.json")
    raw = "raw.safetensors" if "raw.safetensors" in state["sha256"] else "model.safetensors"
    weights = _load_verified(ckpt / raw, state["sha256"][raw])
    model.load_state_dict(weights)
    if averages is not None:
        name = "averages.safetensors"
        tensors = _load_verified(ckpt / name, state["sha256"][name]) if name in state["sha256"] else {}
        device = next(model.parameters()).device
        averages.load_state_dict(tensors, state["extra"].get("averages"), device, str(ckpt / name))
    tensors = _load_verified(ckpt / "optimizer.safetensors", state["sha256"]["optimizer.safetensors"])
    _unflatten_optimizers(optimizers, tensors, state["optimizers"])
    if state.get("rng") is None:
        raise LmgolfError(f"{ckpt / 'state.json'}: corrupt checkpoint state, field 'rng' missing")
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
