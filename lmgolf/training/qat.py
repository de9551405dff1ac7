"""Quantization-aware training: the forward pass sees the weights the artifact will hold.

`QAT(model, policy)` wraps a GPT. While `enabled`, each tensor of the model's state dict is replaced in
the forward pass by its export value, computed as lmgolf.packing.writer computes it: the storage that
`storage_for(policy, name, tensor)` (lmgolf.packing.policy) picks (the fp16 storage of small tensors included, so the whole
forward matches the export), magnitude pruning when pack.prune is set, the grid fixed from the current
(pruned) weights by `STORAGES[storage].grid` (so the grids follow the weights every step, as a pack at
that moment would fix them), `grid.snap` on the rows view, then the low-rank correction when
pack.lowrank names the tensor. Tensors whose export is the identity (fp32 storage, unpruned) are left
alone. The straight-through estimator is written `q + (w - w.detach())`: its value is q itself, bit
for bit (w - w.detach() is exactly 0), and its gradient with respect to w is the identity, so the
weights get the gradient of the loss at the export weights. On the CPU the forward therefore equals
the forward of a model loaded with `lmgolf.packing.writer.dequantized_state_dict(model, policy)`; on CUDA the
snap runs on the device (the export runs on the CPU): equal up to the order of reductions in clip rules
such as "std" and in the low-rank SVD. Not covered: GPTQ (pack.gptq), whose error feedback needs
calibration Hessians; the forward then shows round-to-nearest on the same grid.

How: `torch.func.functional_call` runs the wrapped model with the snapped tensors swapped in for the
forward only. Parameter names, state_dict keys and optimizer param groups stay the model's own (save
and optimize `qat.model`, not the wrapper, whose state_dict keys carry a `model.` prefix). A tensor
the model holds under several names (tied weights) is snapped once, under the name that
`load_state_dict` writes last, as the export's round trip restores it; functional_call's `tie_weights`
keeps the aliases in step.

The snapped values are computed eagerly, outside any compiled graph (`torch.compiler.disable`), with
autocast off, by the quantizer code the export runs, at every forward by default. With `reuse=True`
they are kept until `invalidate()` (or until a tensor's `_version` or storage changes), so the
micro-batches of one step snap once: lmgolf.training.trainer invalidates after every optimizer step. The version
counter alone would not do: fused optimizers (torch.optim.Adam(fused=True), which lmgolf.training.optim picks on
CUDA) update the weights in place without bumping it.

The switch. A known pitfall: a compiled graph folded a Python flag read at trace time, and QAT never
switched on. Here `enabled` is a plain attribute of this module read in `forward`; dynamo installs a
guard on it, so flipping it fails the guard and the next call compiles (once) the other branch.
tests/test_qat.py checks this under torch.compile, and checks that the same test catches a flag that is
folded without a guard. The alternative, a tensor multiplier (w + m * (q - w), m = 0. or 1.), has no
branch to fold but must snap every weight at every step even while QAT is off. Measured on one CPU
thread (4 layers, d_model 256, 8 x 128 tokens, int5/int6 rows, percentile clip), a forward and backward
while off took about 1.3x the plain model's time eager and 1.5-1.9x compiled (aot_eager); the guarded
flag costs nothing while off (the plain model's graph) and one extra compilation at the switch, which
lmgolf.training.trainer does before its clock starts.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.func import functional_call

from lmgolf.config import PackPolicy, TrainConfig
from lmgolf.errors import LmgolfError
from lmgolf.training.optim import lr_multiplier
from lmgolf.packing.policy import export_rows, prune_masks, pruned_names, storage_for, storages_for


def qat_targets(model: nn.Module, policy: PackPolicy) -> dict[str, str]:
    """State-dict name -> storage of each tensor whose export value differs from its float value
    (everything but unpruned fp32 storage), each shared tensor once, under its last name."""
    tensors = model.state_dict(keep_vars=True)
    storages = storages_for(policy, tensors)
    pruned = set(pruned_names(tensors, storages, policy))
    last: dict[int, str] = {}
    for name, t in tensors.items():
        last.pop(id(t), None)
        last[id(t)] = name
    return {n: storages[n] for n in last.values()
            if tensors[n].is_floating_point() and (storages[n] != "fp32" or n in pruned)}


def snap_tensor(name: str, w: torch.Tensor, storage: str, policy: PackPolicy,
                keep: torch.Tensor | None = None) -> torch.Tensor:
    """The export value of float32 w: pruned to `keep` (rows view), snapped onto its storage's grid,
    plus the low-rank correction of the error (round to nearest; lmgolf.packing.writer, without GPTQ)."""
    try:
        _, snapped, lowrank = export_rows(name, w, storage, policy, keep)
    except ValueError as e:
        raise LmgolfError(f"tensor {name}: cannot store as {storage}: {e}") from None
    if lowrank is not None:
        snapped = snapped + lowrank[0].float() @ lowrank[1].float()
    return snapped.reshape(w.shape)


class QAT(nn.Module):
    """The wrapped model's forward, with the export's weights while `enabled` (straight-through)."""

    def __init__(self, model: nn.Module, policy: PackPolicy, enabled: bool = False, reuse: bool = False):
        super().__init__()
        policy.validate()
        self.model = model
        self.policy = policy
        self.enabled = enabled  # read in forward: dynamo guards on it (see the module docstring)
        self.reuse = reuse      # keep the snapped values until invalidate() (see the module docstring)
        self.targets = qat_targets(model, policy)
        names = list(model.state_dict(keep_vars=True))
        self._owners = {name: _owner(model, name) for name in names}  # name -> (module, attribute)
        self._storages = {name: storage_for(policy, name, self.tensor(name)) for name in names}
        self._pruned = pruned_names(names, self._storages, policy)
        self._cache: tuple[tuple, dict[str, torch.Tensor]] | None = None

    @property
    def cfg(self):
        return self.model.cfg

    def invalidate(self) -> None:
        """Forget the snapped values (with reuse=True, call it whenever the weights have changed)."""
        self._cache = None

    def tensor(self, name: str) -> torch.Tensor:
        module, attr = self._owners[name]
        return getattr(module, attr)

    def forward(self, *args, **kwargs):
        if not self.enabled:
            return self.model(*args, **kwargs)
        weights = {}
        for name, q in self.snapped().items():
            w = self.tensor(name)
            weights[name] = q + (w - w.detach())  # the value q, the gradient of w
        return functional_call(self.model, weights, args, kwargs)

    @torch.compiler.disable
    def snapped(self) -> dict[str, torch.Tensor]:
        """Name -> export value (no gradient) of every target."""
        if not self.targets:
            return {}
        involved = {name: self.tensor(name) for name in (*self.targets, *self._pruned)}
        key = tuple((name, t._version, t.data_ptr(), t.dtype, t.device) for name, t in involved.items())
        if self.reuse and self._cache is not None and self._cache[0] == key:
            return self._cache[1]
        with torch.no_grad(), torch.autocast(next(iter(involved.values())).device.type, enabled=False):
            state = {name: t.detach().float() for name, t in involved.items()}
            masks = prune_masks({n: state[n] for n in self._pruned}, self._storages, self.policy)
            values = {name: snap_tensor(name, state[name], storage, self.policy, masks.get(name))
                      .to(involved[name].dtype) for name, storage in self.targets.items()}
        self._cache = (key, values) if self.reuse else None
        return values


def _owner(model: nn.Module, name: str) -> tuple[nn.Module, str]:
    path, _, attr = name.rpartition(".")
    return (model.get_submodule(path) if path else model), attr


def qat_due(fraction: float, t: TrainConfig) -> bool:
    """Whether QAT is on at this fraction of the budget: from qat_start on, or once the warmdown has
    brought the LR multiplier down to qat_lr_scale (when > 0), whichever comes first. A pure and
    non-decreasing function of progress, so a resumed run is in the state it was in."""
    if not t.qat:
        return False
    if fraction >= t.qat_start:
        return True
    return t.qat_lr_scale > 0 and fraction >= t.warmup and lr_multiplier(fraction, t) <= t.qat_lr_scale
