"""Parameter and FLOP accounting, read off the module that the config builds.

FLOP convention (PaLM appendix B, nanoGPT's MFU): training FLOPs per token =
6 x (weights used in matrix multiplies, the output head included, embedding lookups excluded)
+ what modules declare besides their weights: attention scores (12 x attention width x context per
attention layer, 18 for differential attention) and the SSM scan. The forward pass is one third of that.

Modules declare their own costs beside their code, and this file only sums them:
  uses()                   the parts a token runs through, once per application (default: the children)
  matmul_weights()         the weights one application multiplies, instead of its Linear layers' (MoE)
  direct_matmul_weights()  weights it multiplies itself besides its parts' (the GPT's head)
  extra_flops(context)     training FLOPs per token outside weight matmuls, by kind
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import torch
from torch import nn

from lmgolf.config import ModelConfig
from lmgolf.model.gpt import GPT
from lmgolf.params import GROUPS, parameter_group


@dataclass
class ModelCount:
    params_by_group: dict[str, int]
    matmul_weights: int
    attention_flops_per_token: int  # attention scores: QK^T and AV
    scan_flops_per_token: int = 0   # the selective SSM's scan

    @property
    def params(self) -> int:
        return sum(self.params_by_group.values())

    @property
    def train_flops_per_token(self) -> int:
        return 6 * self.matmul_weights + self.attention_flops_per_token + self.scan_flops_per_token

    @property
    def forward_flops_per_token(self) -> int:
        return self.train_flops_per_token // 3


def _parts(module: nn.Module):
    return module.uses() if hasattr(module, "uses") else module.children()


def matmul_weights(module: nn.Module) -> int:
    """The weights one application of `module` multiplies per token."""
    if hasattr(module, "matmul_weights"):
        return module.matmul_weights()
    if isinstance(module, nn.Linear):
        return module.weight.numel()
    own = module.direct_matmul_weights() if hasattr(module, "direct_matmul_weights") else 0
    return own + sum(matmul_weights(m) for m in _parts(module))


def extra_flops(module: nn.Module, context: int) -> Counter:
    """Training FLOPs per token outside weight matmuls, by kind, of one application of `module`."""
    total = Counter(module.extra_flops(context)) if hasattr(module, "extra_flops") else Counter()
    for m in _parts(module):
        total += extra_flops(m, context)
    return total


def count_module(model: GPT, context: int | None = None) -> ModelCount:
    """Parameters by group and FLOPs per token, attention's at `context` (default: the model's own)."""
    groups = {g: 0 for g in GROUPS}
    for name, p in model.named_parameters():
        groups[parameter_group(name)] += p.numel()
    extra = extra_flops(model, context or model.cfg.context)
    return ModelCount({g: n for g, n in groups.items() if n}, matmul_weights(model), extra["attention"], extra["scan"])


def count_config(cfg: ModelConfig) -> ModelCount:
    """Counts without allocating memory: the model is built on the meta device."""
    with torch.device("meta"):
        return count_module(GPT(cfg))


def format_count(cfg: ModelConfig, count: ModelCount) -> str:
    lines = [f"{'group':<12}{'parameters':>14}{'share':>8}"]
    for group, n in count.params_by_group.items():
        lines.append(f"{group:<12}{n:>14,}{n / count.params:>8.1%}")
    lines.append(f"{'total':<12}{count.params:>14,}")
    lines.append("")
    lines.append(f"matmul weights (head incl., lookups excl.): {count.matmul_weights:,}")
    terms = [f"6 x {count.matmul_weights:,}"]
    if count.attention_flops_per_token:
        terms.append(f"{count.attention_flops_per_token:,} (attention scores at context {cfg.context})")
    if count.scan_flops_per_token:
        terms.append(f"{count.scan_flops_per_token:,} (SSM scan)")
    lines.append(f"training FLOPs/token = {' + '.join(terms)} = {count.train_flops_per_token:,}")
    lines.append(f"forward FLOPs/token = {count.forward_flops_per_token:,}")
    return "\n".join(lines)
