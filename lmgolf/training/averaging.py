"""Weight averaging: an EMA of the weights and SWA (a uniform mean of snapshots), kept in fp32 on the device.

  EMA  from the first step at which progress (the agreed budget fraction at the top of the step) is
       >= train.ema_start: initialized to the weights after that step, then avg = d*avg + (1-d)*w after
       every later optimizer step, d = train.ema_decay (0: off).
  SWA  after every optimizer step whose number is a multiple of train.swa_every (0: off) and whose
       progress is >= train.swa_start (default: the warmdown's start, 1 - train.warmdown): the weights
       join a running mean, avg += (w - avg) / n with n the snapshot count.

The averages cover the model's parameters (GPT.named_parameters(): QAT's wrapper adds none); buffers
come from the raw model. Under DDP every rank holds the same weights after each step and the same agreed
progress, so every rank's averages are the same without any communication. A variant with nothing in it
yet (EMA not started, no SWA snapshot) is not kept: it is not reported and exporting it exports the raw
weights (docs/training.md, "Weight averaging").
"""

from __future__ import annotations

import contextlib

import torch

from lmgolf.errors import LmgolfError

VARIANTS = ("raw", "ema", "swa")


def swa_start(t) -> float:
    return 1 - t.warmdown if t.swa_start is None else t.swa_start


class WeightAverages:
    def __init__(self, model: torch.nn.Module, t):
        self.decay, self.ema_start = float(t.ema_decay), float(t.ema_start)
        self.swa_every, self.swa_start = int(t.swa_every), float(swa_start(t))
        self.names = [name for name, _ in model.named_parameters()]
        self.ema: dict[str, torch.Tensor] | None = None
        self.swa: dict[str, torch.Tensor] | None = None
        self.ema_step: int | None = None  # the step the EMA started at
        self.swa_count = 0

    @property
    def enabled(self) -> bool:
        return bool(self.decay) or bool(self.swa_every)

    def kept(self) -> list[str]:
        """The variants with something in them, raw first."""
        return ["raw"] + [n for n in ("ema", "swa") if getattr(self, n) is not None]

    @torch.no_grad()
    def update(self, model: torch.nn.Module, step: int, progress: float) -> None:
        """After optimizer step `step` (counted from 1), taken at budget fraction `progress`."""
        params = dict(model.named_parameters())
        if self.decay and progress >= self.ema_start:
            if self.ema is None:
                self.ema = {n: params[n].detach().float().clone() for n in self.names}
                self.ema_step = step
            else:
                for n in self.names:
                    self.ema[n].mul_(self.decay).add_(params[n].detach().float(), alpha=1 - self.decay)
        if self.swa_every and step % self.swa_every == 0 and progress >= self.swa_start:
            if self.swa is None:
                self.swa = {n: params[n].detach().float().clone() for n in self.names}
                self.swa_count = 1
            else:
                self.swa_count += 1
                for n in self.names:
                    self.swa[n].add_((params[n].detach().float() - self.swa[n]) / self.swa_count)

    def state_dict(self) -> tuple[dict[str, torch.Tensor], dict]:
        """(tensors `ema.NAME`/`swa.NAME` on the CPU, JSON metadata) for a checkpoint."""
        tensors = {}
        for kind in ("ema", "swa"):
            for n, v in (getattr(self, kind) or {}).items():
                tensors[f"{kind}.{n}"] = v.detach().contiguous().cpu()
        return tensors, {"ema_step": self.ema_step, "swa_count": self.swa_count}

    def load_state_dict(self, tensors: dict[str, torch.Tensor], meta: dict | None, device, where: str) -> None:
        meta = meta or {}
        self.ema_step, self.swa_count = meta.get("ema_step"), int(meta.get("swa_count") or 0)
        for kind in ("ema", "swa"):
            found = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith(kind + ".")}
            if not found:
                setattr(self, kind, None)
                continue
            if set(found) != set(self.names):
                raise LmgolfError(f"{where}: the {kind} average does not cover the model's parameters")
            setattr(self, kind, {n: found[n].to(device=device, dtype=torch.float32) for n in self.names})
        if (self.ema is None) != (self.ema_step is None) or (self.swa is None) != (self.swa_count == 0):
            raise LmgolfError(f"{where}: the weight averages do not match their metadata in state.json")

    def weights(self, model: torch.nn.Module, which: str) -> dict[str, torch.Tensor]:
        """The model's state dict with the parameters of variant `which` (raw if it is not kept), in the model's dtypes."""
        sd = model.state_dict()
        avg = getattr(self, which) if which != "raw" else None
        if avg is None:
            return sd
        return {k: (avg[k].to(v.dtype) if k in avg else v) for k, v in sd.items()}

    @contextlib.contextmanager
    def swap_in(self, model: torch.nn.Module, which: str):
        """Within the block the model's parameters hold variant `which`; the raw ones come back after."""
        avg = getattr(self, which) if which != "raw" else None
        if avg is None:
            yield model
            return
        params = dict(model.named_parameters())
        saved = {n: params[n].detach().clone() for n in self.names}
        with torch.no_grad():
            for n in self.names:
                params[n].copy_(avg[n])
        try:
            yield model
        finally:
            with torch.no_grad():
                for n in self.names:
                    params[n].copy_(saved[n])
