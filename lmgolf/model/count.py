"""Parameter and FLOP accounting, read off the module that the config builds.

FLOP convention (PaLM appendix B, nanoGPT's MFU): training FLOPs per token =
6 x (weights used in matrix multiplies, the output head included, embedding lookups excluded)
+ 12 x depth x attention width x context, where depth counts every application of a block (depth
recurrence applies some more than once). The forward pass is one third of that.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from lmgolf.config import ModelConfig
from lmgolf.model.gpt import GPT, MoE
from lmgolf.params import GROUPS, parameter_group

@dataclass
class ModelCount:
    params_by_group: dict[str, int]
    matmul_weights: int
    attention_flops_per_token: int  # 12 x depth x attention width x context

    @property
    def params(self) -> int:
        return sum(self.params_by_group.values())

    @property
    def train_flops_per_token(self) -> int:
        return 6 * self.matmul_weights + self.attention_flops_per_token

    @property
    def forward_flops_per_token(self) -> int:
        return self.train_flops_per_token // 3


def count_module(model: GPT) -> ModelCount:
    groups = {g: 0 for g in GROUPS}
    for name, p in model.named_parameters():
        groups[parameter_group(name)] += p.numel()
    linear = lambda module: sum(m.weight.numel() for m in module.modules() if isinstance(m, nn.Linear))  # noqa: E731
    in_blocks = sum(linear(b) for b in model.blocks)
    per_use = [linear(b) - _idle_experts(b) for b in model.blocks]  # an MoE token runs only its top-k experts
    matmul = linear(model) - in_blocks + sum(per_use[b] for b in model.order)  # reused blocks count per use
    head = model.head.weight.numel() if model.head is not None else 0
    if model.head is None:  # the tied head multiplies by the embedding matrix (and the factorized projection)
        head = model.tok_emb.weight.numel() + (model.emb_proj.weight.numel() if model.emb_proj is not None else 0)
        matmul += head
    matmul += head * len(model.exit_depths)  # each early exit runs the shared head too
    cfg = model.cfg
    attn_width = cfg.n_head * cfg.head_size
    # per attention layer: QK^T and AV, 2 x context x width FLOPs each per token forward; differential
    # attention runs QK^T on two half-width maps and AV twice: 3 instead of 2 such products
    products = sum(0 if model.blocks[b].attn is None else 3 if cfg.diff_attn else 2 for b in model.order)
    attention = 6 * products * attn_width * cfg.context
    return ModelCount({g: n for g, n in groups.items() if n}, matmul, attention)


def _idle_experts(block) -> int:
    mlp = block.mlp
    if not isinstance(mlp, MoE):
        return 0
    expert = sum(m.weight.numel() for m in mlp.experts[0].modules() if isinstance(m, nn.Linear))
    return (len(mlp.experts) - mlp.top_k) * expert


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
    lines.append(f"training FLOPs/token = 6 x {count.matmul_weights:,} + 12 x {len(cfg.layer_order)} x "
                 f"{cfg.n_head * cfg.head_size} x {cfg.context} = {count.train_flops_per_token:,}")
    lines.append(f"forward FLOPs/token = {count.forward_flops_per_token:,}")
    return "\n".join(lines)
