"""model.attn_kernel: the batched-matmul core equals the fused kernel, and `auto` picks it where it is faster."""

import pytest
import torch
import torch.nn.functional as F

from lmgolf.config import ModelConfig
from lmgolf.device import autocast
from lmgolf.errors import LmgolfError
from lmgolf.model import attention
from lmgolf.model.attention import MATMUL_MAX_KEYS, Attention, matmuls_are_faster
from lmgolf.model.context import KVCache, attention_mask
from lmgolf.model.gpt import GPT


def tiny(**kw):
    base = dict(vocab_size=64, n_layer=2, d_model=32, n_head=4, context=16)
    base.update(kw)
    return ModelConfig(**base)


def qkv(B=3, H=4, T=9, S=None, d=8, dtype=torch.float32):
    torch.manual_seed(0)
    S = S or T
    return (torch.randn(B, H, T, d, dtype=dtype), torch.randn(B, H, S, d, dtype=dtype),
            torch.randn(B, H, S, d, dtype=dtype))


def test_matmul_core_equals_the_fused_kernel_causal_with_gradients():
    attn = Attention(tiny())
    q, k, v = (t.requires_grad_() for t in qkv())
    fused = F.scaled_dot_product_attention(q, k, v, is_causal=True)
    grads_fused = torch.autograd.grad(fused.square().sum(), (q, k, v))
    explicit = attn.explicit(q, k, v, None)
    grads_explicit = torch.autograd.grad(explicit.square().sum(), (q, k, v))
    torch.testing.assert_close(explicit, fused, atol=1e-5, rtol=1e-5)
    for a, b in zip(grads_explicit, grads_fused):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("kind", ["documents", "cached keys"])
def test_matmul_core_equals_the_fused_kernel_under_a_mask(kind):
    """A per-row document mask (batch, 1, T, S), and queries after 5 cached keys (1, 1, T, 5 + T)."""
    attn = Attention(tiny())
    if kind == "documents":
        q, k, v = qkv(T=10)
        docs = torch.tensor([[0] * 4 + [1] * 6, [0] * 10, [0, 0, 1, 1, 1, 2, 2, 2, 2, 2]])
        mask = attention_mask(10, 0, q.device, docs, docs)
    else:
        q, k, v = qkv(T=4, S=9)
        mask = attention_mask(4, 5, q.device)
    fused = F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    torch.testing.assert_close(attn.explicit(q, k, v, mask), fused, atol=1e-5, rtol=1e-5)


def test_auto_takes_matmuls_for_bf16_on_a_cpu_up_to_the_key_limit(monkeypatch):
    fused_calls = []
    real = F.scaled_dot_product_attention
    monkeypatch.setattr(attention.F, "scaled_dot_product_attention",
                        lambda *a, **kw: fused_calls.append(1) or real(*a, **kw))
    attn = Attention(tiny())
    for dtype, keys, fused in [(torch.bfloat16, MATMUL_MAX_KEYS, False), (torch.bfloat16, MATMUL_MAX_KEYS + 1, True),
                               (torch.float32, 16, True)]:
        q, k, v = qkv(B=1, H=1, T=keys, d=4, dtype=dtype)
        assert matmuls_are_faster(q, k) == (not fused)
        fused_calls.clear()
        attn.sdpa(q, k, v, None)
        assert bool(fused_calls) == fused
    for kernel, fused in [("fused", True), ("matmul", False)]:
        attn = Attention(tiny(attn_kernel=kernel))
        fused_calls.clear()
        attn.sdpa(*qkv(dtype=torch.bfloat16), None)
        assert bool(fused_calls) == fused


@pytest.mark.parametrize("kw", [dict(), dict(doc_mask=True, bos_id=0, n_kv_head=2), dict(diff_attn=True)])
def test_a_model_with_either_kernel_gives_the_same_logits_and_gradients(kw):
    torch.manual_seed(0)
    fused = GPT(tiny(attn_kernel="fused", **kw))
    explicit = GPT(tiny(attn_kernel="matmul", **kw))
    explicit.load_state_dict(fused.state_dict())
    x = torch.randint(0, 64, (2, 16))
    x[:, 5] = 0
    outs = []
    for model in (fused, explicit):
        logits = model(x)
        logits.logsumexp(-1).sum().backward()
        outs.append((logits, [p.grad for p in model.parameters()]))
    torch.testing.assert_close(outs[1][0], outs[0][0], atol=1e-5, rtol=1e-5)
    for a, b in zip(outs[1][1], outs[0][1]):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_decoding_with_the_matmul_kernel_matches_a_full_pass():
    torch.manual_seed(0)
    model = GPT(tiny(attn_kernel="matmul", doc_mask=True, bos_id=0)).eval()
    x = torch.randint(1, 64, (1, 12))
    x[0, 0], x[0, 5] = 0, 0
    cache = KVCache()
    steps = [model(x[:, :4], cache)] + [model(x[:, t:t + 1], cache) for t in range(4, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), model(x), atol=1e-5, rtol=1e-5)


def test_in_bf16_autocast_the_matmul_kernel_stays_close_to_the_fused_one():
    torch.manual_seed(0)
    fused = GPT(tiny(attn_kernel="fused", context=64))
    explicit = GPT(tiny(attn_kernel="matmul", context=64))
    explicit.load_state_dict(fused.state_dict())
    x = torch.randint(0, 64, (4, 64))
    with autocast(torch.device("cpu"), torch.bfloat16):
        a, b = fused(x).float(), explicit(x).float()
    assert (a - b).abs().max() < 0.05 * a.abs().max()


def test_an_unknown_kernel_is_refused():
    with pytest.raises(LmgolfError, match="model.attn_kernel"):
        tiny(attn_kernel="flash").validate()
