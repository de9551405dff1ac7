"""Dropout (model.dropout and its per-part rates): nanoGPT's three places, in training only, off at 0."""

import pytest
import torch
from torch import nn

from lmgolf.config import ModelConfig
from lmgolf.errors import LmgolfError
from lmgolf.model.attention import Attention
from lmgolf.model.gpt import GPT


def tiny(**kw) -> ModelConfig:
    return ModelConfig(**{"vocab_size": 64, "n_layer": 2, "d_model": 32, "n_head": 2, "context": 16, **kw})


def tokens() -> torch.Tensor:
    return torch.randint(0, 64, (2, 16), generator=torch.Generator().manual_seed(0))


def test_zero_dropout_adds_nothing_and_train_forward_is_bitwise_eval_forward():
    torch.manual_seed(0)
    model = GPT(tiny(positions="learned"))
    assert not any(isinstance(m, nn.Dropout) for m in model.modules())
    x = tokens()
    rng = torch.get_rng_state()
    train_out = model.train()(x)
    assert torch.equal(torch.get_rng_state(), rng)  # no random numbers drawn
    assert torch.equal(train_out, model.eval()(x))


def test_dropout_is_active_in_training_and_off_in_eval():
    torch.manual_seed(0)
    plain = GPT(tiny(positions="learned"))
    torch.manual_seed(0)
    dropped = GPT(tiny(positions="learned", dropout=0.2))
    assert all(torch.equal(a, b) for a, b in zip(plain.state_dict().values(), dropped.state_dict().values()))
    x = tokens()
    dropped.train()
    assert not torch.equal(dropped(x), dropped(x))
    assert torch.equal(dropped.eval()(x), plain.eval()(x))


def test_dropout_is_deterministic_under_a_seed():
    torch.manual_seed(0)
    model = GPT(tiny(dropout=0.3)).train()
    x = tokens()
    torch.manual_seed(7)
    a = model(x)
    torch.manual_seed(7)
    assert torch.equal(a, model(x))


def test_embedding_and_residual_dropout_zero_a_fraction_p():
    torch.manual_seed(0)
    model = GPT(tiny(dropout=0.1, embed_dropout=0.3, resid_dropout=0.5, d_model=64)).train()
    zeros = {}

    def record(name):
        return lambda module, args, out: zeros.setdefault(name, []).append((out == 0).float().mean().item())

    model.drop.register_forward_hook(record("embed"))
    for block in model.blocks:
        block.attn.resid_dropout.register_forward_hook(record("resid"))
        block.mlp.dropout.register_forward_hook(record("resid"))
    model(torch.randint(0, 64, (16, 16)))
    assert sum(zeros["embed"]) / len(zeros["embed"]) == pytest.approx(0.3, abs=0.03)
    assert sum(zeros["resid"]) / len(zeros["resid"]) == pytest.approx(0.5, abs=0.03)
    assert all(b.attn.attn_dropout == 0.1 for b in model.blocks)


@pytest.mark.parametrize("core,softcap", [("sdpa", None), ("explicit", None), ("explicit", 30.0)])
def test_attention_dropout_zeroes_a_fraction_p_of_the_probabilities(core, softcap):
    """With q = k = 0 every allowed key gets 1/(i+1), and one-hot values make the output the probability
    matrix itself: dropped entries read 0, kept ones 1/((i+1)(1-p)); eval mode leaves them all."""
    p, T = 0.25, 16
    attn = Attention(tiny(attn_dropout=p, attn_softcap=softcap, head_dim=T))
    q = k = torch.zeros(64, 2, T, T)
    v = torch.eye(T).expand(64, 2, T, T)
    allowed = torch.ones(T, T).tril().bool()
    uniform = (1 / torch.arange(1, T + 1.0))[:, None].expand(T, T)
    y = getattr(attn.train(), core)(q, k, v, None)
    assert torch.all(y[..., ~allowed] == 0)
    kept = y[..., allowed] != 0
    assert 1 - kept.float().mean().item() == pytest.approx(p, abs=0.02)
    torch.testing.assert_close(y[..., allowed][kept], (uniform[allowed] / (1 - p)).expand_as(y[..., allowed])[kept])
    assert torch.allclose(getattr(attn.eval(), core)(q, k, v, None)[..., allowed], uniform[allowed].expand(64, 2, -1))


def test_a_dropout_rate_outside_0_1_is_refused():
    with pytest.raises(LmgolfError, match="model.resid_dropout"):
        tiny(resid_dropout=1.0).validate()
    with pytest.raises(LmgolfError, match="model.dropout"):
        tiny(dropout=-0.1).validate()
