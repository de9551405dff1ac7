"""Budget fitting: the widest or deepest variant of a preset whose packed artifact, plus code, fits.

Size estimate. Quantizing and compressing a 16 MB payload with lzma or brotli takes a while; a
transformer repeats the same block layer after layer. The estimate packs what lies outside the
blocks (embeddings, head, norms) and whole blocks of each kind (same tensors, shapes and storages),
evenly spaced through the depth, about sample_bytes of raw payload in all; lays them out in artifact
order behind the real header; compresses that one stream; and scales the blocks' part by the raw size
ratio. Codecs adapt to everything they have seen, so the sample keeps the artifact's own sequence:
smaller samples (rows, or tensors grouped by class) missed by 2 to 7%. tests/test_fit.py checks the
2% promise across storages and codecs; docs/compression.md has the errors measured on pg-baseline.

Which weights. A candidate is sized before it is trained, with the config's own initialization,
except that matrices initialized to zero (zero_init_proj) are drawn like the others: trained weights
are not zero, and zeros would compress to nothing. Trained weights usually have heavier tails than
Gaussian ones, so their codes have lower entropy and the real artifact comes out somewhat smaller: the
search errs on the side of fitting. GPTQ does not change the storages, so the estimate ignores it.

Verification. `verify` packs the winner for real and, should it not fit after all, steps down one
at a time, so the answer always fits whatever the estimate's error.

Tokenizer. With a tokenizer (a data folder's), the model is sized as training would build it: with
the tokenizer's vocabulary and BOS id, its files counted in the header. Without one, the preset's
model is sized as configured, with a stand-in tokenizer of the model's vocabulary and no files (a real
tokenizer adds its files: a few bytes for byte, a few KB for a trained BPE). `fit` and `verify` count the
same header either way.

Search. Parameters grow monotonically with depth (model.n_layer) and with width (model.n_head heads of
a fixed head size, so d_model = n_head x head_dim, with the query/key-value head ratio kept and an
explicit mlp_hidden scaled along), so a binary search over that integer finds the largest that fits.
"""

from __future__ import annotations

import dataclasses
import math
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from lmgolf.codecs import CODECS
from lmgolf.packing.artifact import PREAMBLE, Packed, encode_payload, layout, tokenizer_header
from lmgolf.config import Config, ModelConfig, PackPolicy
from lmgolf.data.tokenizers import Tokenizer
from lmgolf.model.count import count_config
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT
from lmgolf.packing.policy import storages_for
from lmgolf.packing.writer import code_bytes, pack, quantize_state

SEARCHES = ("depth", "width")


def estimate_packed_bytes(model: GPT, policy: PackPolicy, header: dict | None = None,
                          sample_bytes: int = 8 << 20) -> int:
    """Estimated artifact bytes: exact header, blob section from whole sampled blocks."""
    state = {name: t.detach().float().cpu() for name, t in model.state_dict().items()}
    storages = storages_for(policy, state)
    units: dict[str, list[str]] = {}  # "blocks.i" -> its tensors; "" -> every tensor outside the blocks
    for name in state:
        units.setdefault(".".join(name.split(".")[:2]) if name.startswith("blocks.") else "", []).append(name)
    kinds: dict[tuple, list[str]] = {}  # blocks alike (same tensors, shapes and storages) -> their units
    for unit, names in units.items():
        if unit:
            kinds.setdefault(tuple((_in_block(n), tuple(state[n].shape), storages[n]) for n in names), []).append(unit)
    packed: dict[str, Packed] = {}

    def blobs_of(names: list[str]) -> bytes:
        todo = [n for n in names if n not in packed]
        packed.update((p.name, p) for p in quantize_state({n: state[n] for n in todo}, policy, storages))
        return layout([packed[n] for n in names], policy.byte_shuffle)[1]

    codec = CODECS[policy.codec]
    first = {kind: len(blobs_of(units[members[0]])) for kind, members in kinds.items()}
    share = min(1.0, sample_bytes / max(sum(first[k] * len(m) for k, m in kinds.items()), 1))
    sample, blobs_total = blobs_of(units.get("", [])), 0
    for kind, members in kinds.items():  # the rest, then evenly spaced whole blocks of each kind, in order
        take = max(1, math.ceil(len(members) * share))
        picks = [members[round(i * (len(members) - 1) / max(take - 1, 1))] for i in range(take)]
        sample += blobs_of([n for unit in picks for n in units[unit]])
        blobs_total += first[kind] * len(members)
    blobs_total += len(blobs_of(units.get("", [])))
    twin = {}  # a tensor of an unsampled block -> the same tensor of its kind's first block
    for members in kinds.values():
        for unit in members:
            for n, m in zip(units[unit], units[members[0]]):
                twin[n] = m
    stand_ins = [packed.get(n) or dataclasses.replace(packed[twin[n]], name=n) for n in state]
    head = encode_payload({**(header or {}), "tensors": layout(stand_ins, policy.byte_shuffle)[0]}, b"")
    # the header goes in front of the sample, as in the artifact: a codec's choices depend on all it has seen
    header_bytes = len(codec.compress(head))
    with_sample = len(codec.compress(head + sample))
    return PREAMBLE + header_bytes + round((with_sample - header_bytes) * blobs_total / max(len(sample), 1))


def _in_block(name: str) -> str:
    return name.split(".", 2)[2]


def sizing_model(cfg: ModelConfig, seed: int = 0) -> GPT:
    """The candidate with its initial weights, zero-initialized matrices drawn like the others."""
    torch.manual_seed(seed)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            if p.ndim >= 2 and not p.any():
                p.normal_(0.0, cfg.init_std)
    return model


def variant(cfg: ModelConfig, search: str, value: int) -> ModelConfig:
    """The preset's model with n_layer (depth) or n_head at a fixed head size (width) set to value."""
    if search == "depth":
        if cfg.depth_pattern:
            raise LmgolfError("fit --search depth: the preset sets model.depth_pattern; search width instead")
        return dataclasses.replace(cfg, n_layer=value)
    ratio = cfg.n_head // (cfg.n_kv_head or cfg.n_head)
    n_head = value * ratio  # value counts key-value groups, so the head ratio stays whole
    d_model = n_head * cfg.head_size
    hidden = None if cfg.mlp_hidden is None else max(8, round(cfg.mlp_hidden * d_model / cfg.d_model / 8) * 8)
    return dataclasses.replace(cfg, n_head=n_head, n_kv_head=None if cfg.n_kv_head is None else value,
                               head_dim=cfg.head_dim, d_model=d_model, mlp_hidden=hidden)


class StandInTokenizer(Tokenizer):
    """Counted in the header when no tokenizer is given: the model's vocabulary, no files. For sizing only."""

    kind, lossy = "stand-in", False

    def __init__(self, vocab_size: int, bos_id: int | None = None):
        self.vocab_size = vocab_size
        self.bos_id = vocab_size - 1 if bos_id is None else bos_id

    def files(self) -> dict[str, bytes]:
        return {}


def sized_as_trained(cfg: Config, tokenizer=None) -> tuple[Config, Tokenizer]:
    """The config and tokenizer to size: with a tokenizer, the model takes its vocabulary and BOS id (as
    training does); without one, the preset's model as configured and a StandInTokenizer."""
    if tokenizer is None:
        return cfg, StandInTokenizer(cfg.model.vocab_size, cfg.model.bos_id)
    model = dataclasses.replace(cfg.model, vocab_size=tokenizer.vocab_size, bos_id=tokenizer.bos_id)
    return dataclasses.replace(cfg, model=model), tokenizer


@dataclass
class Candidate:
    value: int
    params: int
    estimate: int
    fits: bool


@dataclass
class FitResult:
    search: str
    best: Candidate | None
    tried: list[Candidate]
    config: ModelConfig | None
    code_bytes: int
    budget: int
    packed_bytes: int | None = None  # the winner packed for real (verify)

    def overrides(self) -> list[str]:
        if self.config is None:
            return []
        if self.search == "depth":
            return [f"model.n_layer={self.config.n_layer}"]
        out = [f"model.n_head={self.config.n_head}", f"model.d_model={self.config.d_model}"]
        if self.config.n_kv_head is not None:
            out.append(f"model.n_kv_head={self.config.n_kv_head}")
        if self.config.mlp_hidden is not None:
            out.append(f"model.mlp_hidden={self.config.mlp_hidden}")
        return out


def fit(cfg: Config, budget: int, search: str = "depth", policy: PackPolicy | None = None,
        runner: str = "plain", tokenizer=None, limit: int = 256, seed: int = 0) -> FitResult:
    """The largest depth or width whose estimated artifact plus code bytes stays within budget. With a
    tokenizer, the model takes its vocabulary and the header counts it as the artifact will store it;
    without one, the preset's model as configured with a stand-in tokenizer (see sized_as_trained)."""
    if search not in SEARCHES:
        raise LmgolfError(f"fit: --search must be one of {', '.join(SEARCHES)}, got {search!r}")
    cfg, tokenizer = sized_as_trained(cfg, tokenizer)
    policy = policy or cfg.pack
    policy.validate()
    code = code_bytes(runner)
    tried: dict[int, Candidate] = {}

    def size(value: int) -> Candidate:
        if value not in tried:
            mcfg = variant(cfg.model, search, value)
            mcfg.validate()
            header = {"config": dataclasses.replace(cfg, model=mcfg).to_dict(),
                      "tokenizer": tokenizer_header(tokenizer)}
            estimate = estimate_packed_bytes(sizing_model(mcfg, seed), policy, header)
            tried[value] = Candidate(value, count_config(mcfg).params, estimate, estimate + code <= budget)
        return tried[value]

    lo, hi = 0, 1  # lo: largest known to fit (0: none); hi: grows until it does not fit
    while hi <= limit and size(hi).fits:
        lo, hi = hi, hi * 2
    hi = min(hi, limit + 1)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if size(mid).fits else (lo, mid)
    best = tried.get(lo) if lo else None
    return FitResult(search, best, sorted(tried.values(), key=lambda c: c.value),
                     variant(cfg.model, search, lo) if lo else None, code, budget)


def verify(result: FitResult, cfg: Config, policy: PackPolicy, tokenizer=None, runner: str = "plain",
           seed: int = 0) -> FitResult:
    """Packs the winner for real; should it not fit after all, steps down until one does. Pass the
    tokenizer given to fit (None: the preset's model as configured, with a stand-in tokenizer)."""
    cfg, tokenizer = sized_as_trained(cfg, tokenizer)
    value = result.best.value if result.best else 0
    while value >= 1:
        mcfg = variant(cfg.model, result.search, value)
        with tempfile.TemporaryDirectory() as tmp:
            report = pack(sizing_model(mcfg, seed), dataclasses.replace(cfg, model=mcfg, pack=policy), tokenizer,
                          Path(tmp) / "fit.lmg", policy, budget=result.budget, allow_over_budget=True, runner=runner)
        if report.fits():
            best = next((c for c in result.tried if c.value == value), None) or Candidate(
                value, count_config(mcfg).params, report.artifact_bytes, True)
            return dataclasses.replace(result, best=best, config=mcfg, packed_bytes=report.artifact_bytes)
        value -= 1
    return dataclasses.replace(result, best=None, config=None)
