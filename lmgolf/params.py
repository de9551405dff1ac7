"""The parameter classifier: every parameter's group (for counts and pack rules) and optimizer role.

One table, read top to bottom, names each parameter the model can have. A name that no rule
matches is an error, never a silent default: a new module adds its rules here.

Roles (lmgolf.training.optim):
  matrix     a 2-D weight of a linear map: Muon
  embedding  a lookup table: Adam at embed_lr
  head       the untied output head: Adam at head_lr
  scalar     gains, biases, gates, mixes, filters and decays: Adam at scalar_lr
"""

from __future__ import annotations

import re
from dataclasses import dataclass

GROUPS = ("embedding", "bigram", "positions", "attention", "ssm", "window", "mlp", "norms", "scales", "skips", "head")
ROLES = ("matrix", "embedding", "head", "scalar")

_BLOCK = r"blocks\.\d+\."
_RULES = [  # (full-name pattern, group, role), by the lmgolf.model module that owns the parameter
    # gpt.py: token embedding, factorized projection, U-Net skip weights, final norm, untied head
    (r"tok_emb\.weight", "embedding", "embedding"),
    (r"emb_proj\.weight", "embedding", "matrix"),        # factorized embedding: r -> d projection
    (r"skip_weights", "skips", "scalar"),
    (r"final_norm\.(weight|bias)", "norms", "scalar"),
    (r"head\.weight", "head", "head"),
    # positions.py: learned absolute positions
    (r"pos_emb\.weight", "positions", "embedding"),
    # neighbours.py: BigramHash, SmearGate
    (r"bigram\.table\.weight", "bigram", "embedding"),
    (r"bigram\.proj\.weight", "bigram", "matrix"),
    (r"smear\.gate\.(weight|bias)", "scales", "scalar"),  # a 1 x d gate: a vector, not a matrix
    # gpt.py Block: its norms, output scales, residual mix
    (_BLOCK + r"(attn|mlp)_norm\.(weight|bias)", "norms", "scalar"),
    (_BLOCK + r"(attn|mlp)_scale", "scales", "scalar"),
    (_BLOCK + r"resid_mix", "scales", "scalar"),
    # attention.py
    (_BLOCK + r"attn\.(q|k|v|proj|gate)\.weight", "attention", "matrix"),
    (_BLOCK + r"attn\.(q|k|v|proj|gate)\.bias", "attention", "scalar"),
    (_BLOCK + r"attn\.lambdas", "attention", "scalar"),  # differential attention's lambda vectors
    (_BLOCK + r"attn\.(q_gain|v_mix)", "scales", "scalar"),
    # ssm.py
    (_BLOCK + r"ssm\.(in_proj|x_proj|dt_proj|out_proj)\.weight", "ssm", "matrix"),
    (_BLOCK + r"ssm\.(conv|conv_bias|A_log|D|dt_proj\.bias)", "ssm", "scalar"),
    # mlp.py: MLP, MoE
    (_BLOCK + r"mlp\.(experts\.\d+\.)?(up|gate|proj)\.weight", "mlp", "matrix"),
    (_BLOCK + r"mlp\.(experts\.\d+\.)?(up|gate|proj)\.bias", "mlp", "scalar"),
    (_BLOCK + r"mlp\.router\.weight", "mlp", "matrix"),
    # window.py
    (r"window_net\.(up|proj)\.weight", "window", "matrix"),
    (r"window_net\.(up|proj)\.bias", "window", "scalar"),
]
_COMPILED = [(re.compile(pattern), group, role) for pattern, group, role in _RULES]


@dataclass(frozen=True)
class ParamClass:
    group: str
    role: str


def classify(name: str) -> ParamClass:
    """The group and role of a parameter (or state-dict tensor) by its name; ValueError if no rule names it."""
    for pattern, group, role in _COMPILED:
        if pattern.fullmatch(name):
            return ParamClass(group, role)
    raise ValueError(f"parameter {name!r} has no group and role in lmgolf.params: add a rule for it")


def parameter_group(name: str) -> str:
    return classify(name).group
