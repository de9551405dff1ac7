"""One parameter classifier (lmgolf.params): every parameter of every model gets a group and an
optimizer role from its rules, never by fallback, and the optimizers follow the roles."""

import pytest
import torch
from hypothesis import HealthCheck, assume, given, settings

from lmgolf.config import ModelConfig, TrainConfig
from lmgolf.errors import LmgolfError
from lmgolf.model.count import count_module
from lmgolf.model.gpt import GPT
from lmgolf.params import GROUPS, ROLES, classify
from lmgolf.training.optim import Muon, build_optimizers
from test_model_properties import configs


def built(cfg: ModelConfig) -> GPT:
    try:
        cfg.validate()
    except LmgolfError:
        assume(False)
    with torch.device("meta"):
        return GPT(cfg)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_groups_partition_the_parameters_and_every_role_is_a_rule(cfg):
    model = built(cfg)
    named = dict(model.named_parameters())
    classes = {name: classify(name) for name in named}  # raises for a parameter no rule names
    assert all(c.group in GROUPS and c.role in ROLES for c in classes.values())
    by_group = {g: sum(named[n].numel() for n, c in classes.items() if c.group == g) for g in GROUPS}
    assert sum(by_group.values()) == sum(p.numel() for p in model.parameters())
    assert count_module(model).params_by_group == {g: n for g, n in by_group.items() if n}
    for name, c in classes.items():  # Muon orthogonalizes: only 2-D weights of linear maps are matrices
        if c.role == "matrix":
            assert named[name].ndim == 2 and name.endswith(".weight"), name


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(configs())
def test_muon_optimizers_hold_each_parameter_once_with_its_role(cfg):
    model = built(cfg).to_empty(device="cpu")
    optimizers = build_optimizers(model, TrainConfig(), ns_dtype=torch.float32)
    seen = {}
    for opt in optimizers:
        for group in opt.param_groups:
            role = "matrix" if isinstance(opt, Muon) else {0.05: "embedding", 0.008: "head", 0.04: "scalar"}[group["lr"]]
            for p in group["params"]:
                assert id(p) not in seen
                seen[id(p)] = role
    assert seen == {id(p): classify(n).role for n, p in model.named_parameters()}


def test_an_unknown_parameter_name_is_an_error_not_a_default():
    with pytest.raises(ValueError, match="'blocks.0.mystery' has no group and role"):
        classify("blocks.0.mystery")


@pytest.mark.parametrize("family", ["linear", "mlp"])
def test_window_families_train_under_muon(family):
    torch.manual_seed(0)
    model = GPT(ModelConfig(family=family, vocab_size=32, d_model=16, n_head=2, window=3, context=8, bos_id=0))
    optimizers = build_optimizers(model, TrainConfig(optimizer="muon"), ns_dtype=torch.float32)
    muon = next(o for o in optimizers if isinstance(o, Muon))
    assert {id(p) for p in muon.param_groups[0]["params"]} == {id(model.window_net.up.weight)} | (
        {id(model.window_net.proj.weight)} if family == "mlp" else set())
    idx = torch.randint(1, 32, (4, 8))
    before = model.loss(idx[:, :-1], idx[:, 1:]).item()
    for _ in range(30):
        loss = model.loss(idx[:, :-1], idx[:, 1:])
        loss.backward()
        for opt in optimizers:
            opt.step()
            opt.zero_grad()
    assert model.loss(idx[:, :-1], idx[:, 1:]).item() < 0.7 * before
