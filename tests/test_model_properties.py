"""Property tests over random configs that mix the token-mixing options: causality, and FLOP and
parameter counts equal to what the built module does."""

import torch
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmgolf.config import ModelConfig
from lmgolf.model.count import count_module
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT


@st.composite
def configs(draw):
    n_layer = draw(st.integers(1, 3))
    family = draw(st.sampled_from(["transformer"] * 6 + ["linear", "mlp"]))
    kw = dict(
        vocab_size=40, n_layer=n_layer, d_model=32, n_head=4, context=12, bos_id=0, family=family,
        window=draw(st.integers(1, 4)),
        n_kv_head=draw(st.sampled_from([None, 2, 1])),
        positions=draw(st.sampled_from(["rope", "learned", "none"])),
        norm=draw(st.sampled_from(["rmsnorm", "layernorm"])),
        norm_position=draw(st.sampled_from(["pre", "pre", "post"])),
        mlp=draw(st.sampled_from(["gelu", "swiglu", "relu2", "leaky_relu2"])),
        qk_norm=draw(st.booleans()),
        doc_mask=draw(st.booleans()),
        attn_softcap=draw(st.sampled_from([None, 8.0])),
        attn_gate=draw(st.sampled_from(["none", "head", "element"])),
        exclusive_attn=draw(st.booleans()),
        diff_attn=draw(st.booleans()),
        value_residual=draw(st.booleans()),
        bigram_buckets=draw(st.sampled_from([0, 31])), bigram_dim=8,
        smear_gate=draw(st.booleans()),
        embed_rank=draw(st.sampled_from([None, 8])),
        tie_embeddings=draw(st.booleans()),
        ssm_layers=draw(st.sampled_from(["", "0", "all"])), ssm_state=4,
        moe_experts=draw(st.sampled_from([0, 3])), moe_top_k=draw(st.sampled_from([1, 2])),
        depth_pattern=draw(st.sampled_from(["", ",".join(str(i) for i in list(range(n_layer)) * 2)])),
        exit_layers="",
    )
    if kw["positions"] == "rope":
        kw["rope_dims"] = draw(st.sampled_from([None, 4]))
        kw["nope_every"] = draw(st.sampled_from([0, 2]))
        if kw["diff_attn"]:
            kw["rope_dims"] = None
    if kw["norm_position"] == "pre":
        kw["parallel_from"] = draw(st.sampled_from([None, 0]))
    return ModelConfig(**kw)


def build(cfg):
    try:
        cfg.validate()
    except LmgolfError:
        return None
    torch.manual_seed(0)
    model = GPT(cfg)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(configs(), st.integers(1, 10))
def test_random_configs_are_causal(cfg, t):
    model = build(cfg)
    assume(model is not None)
    x = torch.randint(1, cfg.vocab_size, (2, cfg.context))
    x[:, 0] = 0
    x[1, 5] = 0
    y = x.clone()
    y[:, t + 1:] = (y[:, t + 1:] + 3) % cfg.vocab_size
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.allclose(a[:, :t + 1], b[:, :t + 1], atol=1e-5)


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(configs())
def test_random_configs_flops_and_parameters_match_the_module(cfg):
    model = build(cfg)
    assume(model is not None)
    count = count_module(model)
    assert count.params == sum(p.numel() for p in model.parameters())
    x = torch.randint(0, cfg.vocab_size, (1, cfg.context))
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter, torch.no_grad():
        model(x)
    # the counter sees matrix multiplies only, not the elementwise SSM scan
    assert counter.get_total_flops() * 3 == (count.train_flops_per_token - count.scan_flops_per_token) * x.numel()
