"""Writing an artifact: prune, quantize (round to nearest or GPTQ), correct, lay out, compress, report.

For each tensor, in order:
  1. pruning (pack.prune > 0): the chosen weights with the smallest |w| become exact zeros;
  2. the storage fixes its grid (scales) from the pruned weights;
  3. the weights are rounded onto the grid: plainly, or with GPTQ when a Hessian exists for the
     tensor (pack.gptq; calibration on training tokens or on text the model samples itself);
  4. low-rank correction (pack.lowrank): A @ B (fp16) of the remaining error, added back on load.
Only lmgolf.packing.artifact is needed to read the result; this module is not part of the runner file.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from lmgolf.version import __version__
from lmgolf.packing.artifact import (BUDGET, FORMAT_VERSION, MAGIC, Packed, container, encode_payload, layout,
                             policy_header, read_tensors, split_payload, tokenizer_header)
from lmgolf.codecs import CODECS
from lmgolf.config import Config, PackPolicy
from lmgolf.params import GROUPS, parameter_group
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT
from lmgolf.packing.policy import export_rows, prune_masks, storage_for, storages_for
from lmgolf.quantize import STORAGES
from lmgolf.runfiles import atomic_write_bytes, check_replaceable


def calibrate(model: GPT, policy: PackPolicy, train_tokens: np.ndarray | None = None) -> dict[str, torch.Tensor]:
    """GPTQ Hessians of every matrix the policy quantizes, from training tokens or self-generated text."""
    from lmgolf.packing.gptq import calibration_batches, collect_hessians, self_generated_batches
    context = model.cfg.context
    if policy.gptq_calibration == "train":
        if train_tokens is None:
            raise LmgolfError("config field pack.gptq: calibration on training data needs the data folder (--data)")
        batches = calibration_batches(np.asarray(train_tokens), policy.gptq_tokens, context)
    else:
        if model.cfg.bos_id is None:
            raise LmgolfError("config field pack.gptq_calibration: self-generated text needs model.bos_id")
        batches = self_generated_batches(model, policy.gptq_tokens, context, model.cfg.bos_id)
    names = {n for n, t in model.state_dict().items() if STORAGES[storage_for(policy, n, t)].quantizer}
    return collect_hessians(model, batches, names)


def quantize_model(model: GPT, policy: PackPolicy, hessians: dict[str, torch.Tensor] | None = None) -> list[Packed]:
    state = {name: t.detach().float().cpu() for name, t in model.state_dict().items()}
    return quantize_state(state, policy, storages_for(policy, state), hessians)


def quantize_state(state: dict[str, torch.Tensor], policy: PackPolicy, storages: dict[str, str],
                   hessians: dict[str, torch.Tensor] | None = None) -> list[Packed]:
    """float32 tensors -> packed tensors, each in its given storage."""
    for name, w in state.items():
        if not torch.isfinite(w).all():
            raise LmgolfError(f"tensor {name}: contains NaN or inf, refusing to pack")
    masks = prune_masks(state, storages, policy)
    packed = []
    for name, w in state.items():
        try:
            packed.append(_quantize_tensor(name, w, storages[name], policy, masks.get(name), (hessians or {}).get(name)))
        except ValueError as e:
            raise LmgolfError(f"tensor {name}: cannot store as {storages[name]}: {e}") from None
    return packed


def _quantize_tensor(name: str, w: torch.Tensor, storage: str, policy: PackPolicy, keep: torch.Tensor | None,
                     hessian: torch.Tensor | None) -> Packed:
    grid, snapped, lowrank = export_rows(name, w, storage, policy, keep, hessian)
    blobs, meta = grid.encode(snapped)
    if lowrank is not None:
        blobs = {**blobs, "lowrank_a": lowrank[0], "lowrank_b": lowrank[1]}
        meta = {**meta, "lowrank": lowrank[0].shape[1]}
    return Packed(name, list(w.shape), storage, meta, blobs)


def dequantized_state_dict(model: GPT, policy: PackPolicy = PackPolicy(),
                           hessians: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """The float32 weights the model has after a pack/load round trip (same code path, no compression)."""
    policy.validate()
    entries, blob_section = layout(quantize_model(model, policy, hessians), policy.byte_shuffle)
    header, blobs = split_payload(encode_payload({"tensors": entries}, blob_section), "round trip")
    return read_tensors(header["tensors"], blobs, "round trip")


def code_bytes(runner: str = "plain") -> int:
    """The code bytes the challenge counts: the size of the runner file (lmgolf.packing.runner), plain or compressed."""
    from lmgolf.packing.runner import runner_bytes
    return runner_bytes(runner)


@dataclass
class PackReport:
    path: str
    artifact_bytes: int
    code_bytes: int
    total_bytes: int
    budget: int
    groups: list[dict]     # per parameter group: group, params, storage, raw_bytes, compressed_bytes
    codec: str = "zlib"
    header_bytes: int = 0  # the uncompressed JSON header (config, tokenizer, tensor index)
    runner: str = "plain"
    seconds: float = 0.0   # calibrating, quantizing and compressing

    def fits(self) -> bool:
        return self.total_bytes <= self.budget

    def verdict(self) -> str:
        status = "fits" if self.fits() else f"OVER by {self.total_bytes - self.budget:,}"
        return (f"artifact {self.artifact_bytes:,} bytes + code {self.code_bytes:,} bytes ({self.runner} runner) = "
                f"{self.total_bytes:,} bytes of budget {self.budget:,} ({status})")

    def format(self) -> str:
        lines = [f"{'group':<12}{'parameters':>12}  {'storage':<22}{'raw bytes':>12}{self.codec + ' bytes':>13}"
                 f"{'bits/param':>11}"]
        for g in self.groups:
            bits = 8 * g["compressed_bytes"] / max(g["params"], 1)
            lines.append(f"{g['group']:<12}{g['params']:>12,}  {g['storage']:<22}{g['raw_bytes']:>12,}"
                         f"{g['compressed_bytes']:>13,}{bits:>11.3f}")
        lines.append(f"{'header':<12}{'':>12}  {'json':<22}{self.header_bytes:>12,}")
        params = sum(g["params"] for g in self.groups)
        raw = sum(g["raw_bytes"] for g in self.groups) + self.header_bytes
        lines.append(f"{'total':<12}{params:>12,}  {'':<22}{raw:>12,}{self.artifact_bytes:>13,}"
                     f"{8 * self.artifact_bytes / max(params, 1):>11.3f}")
        lines.append(f"(each group compressed alone; the total is the whole artifact) -> {self.path}, "
                     f"{self.seconds:.1f} s")
        lines.append(self.verdict())
        return "\n".join(lines)


def _group_table(packed: list[Packed], entries: list[dict], blob_section: bytes, codec: str) -> list[dict]:
    rows: dict[str, dict] = {}
    for p, entry in zip(packed, entries):
        row = rows.setdefault(parameter_group(p.name), {"params": 0, "storages": set(), "chunks": []})
        row["params"] += int(np.prod(p.shape, dtype=np.int64))
        row["storages"].add(p.storage + ("+lowrank" if "lowrank" in p.meta else ""))
        row["chunks"] += [blob_section[b["offset"]:b["offset"] + b["length"]] for b in entry["blobs"]]
    order = sorted(rows, key=lambda g: GROUPS.index(g) if g in GROUPS else len(GROUPS))
    table = []
    for g in order:
        data = b"".join(rows[g]["chunks"])
        table.append({"group": g, "params": rows[g]["params"], "storage": "+".join(sorted(rows[g]["storages"])),
                      "raw_bytes": len(data), "compressed_bytes": len(CODECS[codec].compress(data))})
    return table


def pack(model: GPT, cfg: Config, tokenizer, path: str | Path, policy: PackPolicy | None = None,
         budget: int = BUDGET, allow_over_budget: bool = False, runner: str = "plain",
         train_tokens: np.ndarray | None = None) -> PackReport:
    """Writes the artifact (atomically) unless artifact + code bytes exceed the budget. The policy
    defaults to the config's pack section; code bytes are those of the runner file; train_tokens feed
    GPTQ's calibration."""
    started = time.perf_counter()
    check_replaceable(path, "artifact", lambda head: head.startswith(MAGIC))  # before any work: overwrite only an artifact
    policy = cfg.pack if policy is None else policy
    policy.validate()
    if model.cfg != cfg.model:
        raise LmgolfError("config: the model was not built from this config's model section")
    if tokenizer.vocab_size > cfg.model.vocab_size:
        raise LmgolfError(f"tokenizer: vocabulary of {tokenizer.vocab_size} exceeds the model's {cfg.model.vocab_size}")
    hessians = calibrate(model, policy, train_tokens) if policy.gptq else None
    packed = quantize_model(model, policy, hessians)
    entries, blob_section = layout(packed, policy.byte_shuffle)
    header = {"format": FORMAT_VERSION, "lmgolf_version": __version__, "config": cfg.to_dict(),
              "tokenizer": tokenizer_header(tokenizer), "policy": policy_header(policy), "tensors": entries}
    payload = encode_payload(header, blob_section)
    data = container(policy.codec, payload)
    code = code_bytes(runner)
    report = PackReport(str(path), len(data), code, len(data) + code, budget,
                        _group_table(packed, entries, blob_section, policy.codec), policy.codec,
                        len(payload) - 4 - len(blob_section), runner, time.perf_counter() - started)
    if not report.fits() and not allow_over_budget:
        raise LmgolfError(f"{path}: not written, {report.verdict()}; "
                          "pass allow_over_budget (--allow-over-budget) to write it anyway")
    check_replaceable(path, "artifact", lambda head: head.startswith(MAGIC))  # again: packing takes a while
    atomic_write_bytes(path, data)
    return report
