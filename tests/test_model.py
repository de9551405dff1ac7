import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmgolf.config import ModelConfig, load_config, load_preset
from lmgolf.model.count import count_config, count_module
from lmgolf.model.gpt import GPT

PRESET_PARAMS = {"pg-baseline": 17_059_912, "s1-option-a": 35_763_840, "nanogpt-shakespeare-char": 10_745_088,
                 "s1-option-b": 31_740_416, "s1-option-c": 33_460_992, "mobilellm-125m": 124_635_456}


@pytest.mark.parametrize("name,expected", PRESET_PARAMS.items())
def test_preset_builds_exact_parameter_count(name, expected):
    cfg = load_preset(name).model
    assert count_config(cfg).params == expected


def test_pg_baseline_has_query_gain_only_on_queries():
    with torch.device("meta"):
        model = GPT(load_preset("pg-baseline").model)
    gains = [n for n, _ in model.named_parameters() if "gain" in n]
    assert len(gains) == 9 and all(n.endswith("attn.q_gain") for n in gains)
    assert model.blocks[0].attn.q_gain.shape == (8,)
    assert model.skip_weights.shape == (4, 512)


def tiny(**kw):
    base = dict(vocab_size=64, n_layer=2, d_model=32, n_head=4, context=16)
    base.update(kw)
    return ModelConfig(**base)


VARIANTS = [
    dict(),
    dict(positions="learned", norm="layernorm", mlp="gelu"),
    dict(n_kv_head=2, qk_norm=True, q_gain=1.5, mlp="relu2", logit_softcap=30.0),
    dict(tie_embeddings=False, unet_skips=True, n_layer=5, resid_mix=True, output_scales=True, embed_norm=True),
    dict(positions="none", n_kv_head=1, bias=True, norm="layernorm", zero_init_proj=True),
    dict(rope_dims=4, nope_every=2, n_layer=4, ln_scale=True, mlp="leaky_relu2"),
    dict(norm_position="post", norm="layernorm", mlp="gelu", positions="learned"),
    dict(exclusive_attn=True, parallel_from=1, n_layer=3, n_kv_head=2),
    dict(doc_mask=True, bos_id=0, n_kv_head=2),
    dict(bigram_buckets=97, bigram_dim=8, smear_gate=True, bos_id=0, tie_embeddings=False),
    dict(attn_softcap=20.0, attn_gate="head", n_kv_head=2),
    dict(attn_gate="element", doc_mask=True, bos_id=0, attn_softcap=5.0),
    dict(n_layer=2, depth_pattern="0,1,0,1,1", unet_skips=True, n_kv_head=2),
    dict(embed_rank=16, value_residual=True, n_layer=3, n_kv_head=2),
    dict(embed_rank=8, tie_embeddings=False, positions="learned"),
    dict(moe_experts=4, moe_top_k=2, mlp="swiglu", n_kv_head=2),
    dict(diff_attn=True, n_kv_head=2, attn_gate="head"),
    dict(diff_attn=True, doc_mask=True, bos_id=0, attn_softcap=10.0, positions="none"),
    dict(exit_layers="1,2", n_layer=3, tie_embeddings=False),
    dict(exit_layers="1", n_layer=2, embed_rank=8, exit_threshold=0.5),
    dict(family="linear", window=4, positions="none"),
    dict(family="mlp", window=3, bos_id=0, mlp="relu2"),
    dict(ssm_layers="all", ssm_state=4, n_layer=2),
    dict(ssm_layers="1", ssm_state=4, n_layer=3, doc_mask=True, bos_id=0),
]


@pytest.mark.parametrize("kw", VARIANTS)
def test_flops_match_torch_flop_counter(kw):
    cfg = tiny(**kw)
    model = GPT(cfg)
    count = count_module(model)
    x = torch.randint(0, cfg.vocab_size, (2, cfg.context))
    # the math backend runs attention as matmuls the counter sees (it skips the fused CPU kernel)
    with sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
        model(x)
    assert counter.get_total_flops() * 3 == count.train_flops_per_token * x.numel()


@pytest.mark.parametrize("kw", VARIANTS)
def test_counted_parameters_equal_module(kw):
    model = GPT(tiny(**kw))
    count = count_module(model)
    assert count.params == sum(p.numel() for p in model.parameters())


@pytest.mark.parametrize("kw", VARIANTS)
def test_causal(kw):
    torch.manual_seed(0)
    cfg = tiny(**kw)
    model = GPT(cfg)
    for p in model.parameters():  # zero-init projections would hide a leak
        torch.nn.init.normal_(p, std=0.1)
    x = torch.randint(0, cfg.vocab_size, (1, cfg.context))
    y = x.clone()
    y[0, 9:] = (y[0, 9:] + 1) % cfg.vocab_size
    a, b = model(x), model(y)
    assert torch.allclose(a[0, :9], b[0, :9], atol=1e-6)
    assert not torch.allclose(a[0, 9:], b[0, 9:])


@pytest.mark.parametrize("kw", [dict(n_kv_head=2, qk_norm=True, q_gain=1.5, mlp="relu2"), *VARIANTS[-19:]])
def test_tiny_model_overfits(kw):
    torch.manual_seed(0)
    cfg = tiny(**kw)
    model = GPT(cfg)
    x = torch.randint(0, cfg.vocab_size, (4, cfg.context + 1))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    first = None
    for _ in range(300):
        loss = model.loss(x[:, :-1], x[:, 1:])
        first = first or loss.item()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.05 * first


def test_same_seed_same_weights():
    torch.manual_seed(3)
    a = GPT(tiny()).state_dict()
    torch.manual_seed(3)
    b = GPT(tiny()).state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_overrides_reach_the_model():
    cfg = load_config("pg-baseline", ["model.n_layer=4", "d_model=256", "train.seed=7"])
    assert (cfg.model.n_layer, cfg.model.d_model, cfg.train.seed) == (4, 256, 7)


def reference_rope(x, dims, base=10000.0):
    """RoPE written independently: pairs (j, j + dims/2) of the first `dims` dimensions as complex numbers."""
    t = torch.arange(x.size(-2), dtype=torch.float64)
    freqs = base ** (-torch.arange(0, dims, 2, dtype=torch.float64) / dims)
    rot = torch.polar(torch.ones(len(t), dims // 2, dtype=torch.float64), torch.outer(t, freqs))
    half = dims // 2
    z = torch.complex(x[..., :half].double(), x[..., half:dims].double()) * rot
    return torch.cat((z.real, z.imag, x[..., dims:].double()), dim=-1).float()


@pytest.mark.parametrize("dims", [8, 4, 2])
def test_rope_and_partial_rope_match_a_reference(dims):
    from lmgolf.model.gpt import Rotary
    x = torch.randn(2, 3, 11, 8)
    assert torch.allclose(Rotary(dims, 10000.0)(x), reference_rope(x, dims), atol=1e-5)


def test_nope_every_k_layers_drops_rotary_there():
    model = GPT(tiny(n_layer=6, nope_every=3, rope_dims=4))
    assert [b.attn.rotary is None for b in model.blocks] == [False, False, True, False, False, True]
    assert model.blocks[0].attn.rotary.dims == 4


def test_ln_scale_and_post_norm_structure():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=3, ln_scale=True))
    assert [b.norm_scale for b in model.blocks] == pytest.approx([1.0, 2 ** -0.5, 3 ** -0.5])
    post = GPT(tiny(norm_position="post"))
    assert post.final_norm is None
    x = torch.randn(1, 5, 32)
    block = post.blocks[0]
    h = block.attn_norm(x + block.attn(x))
    assert torch.allclose(block(x, x), block.mlp_norm(h + block.mlp(h)), atol=1e-6)


def test_leaky_relu2_formula():
    from lmgolf.model.gpt import MLP
    mlp = MLP(tiny(mlp="leaky_relu2", leaky_slope=0.5))
    x = torch.randn(4, 32)
    u = mlp.up(x)
    assert torch.allclose(mlp(x), mlp.proj(torch.where(u > 0, u, 0.5 * u) ** 2), atol=1e-6)


def test_exclusive_attention_output_is_orthogonal_to_own_value():
    torch.manual_seed(0)
    model = GPT(tiny(exclusive_attn=True))
    attn = model.blocks[0].attn
    seen = {}
    attn.proj.register_forward_hook(lambda mod, inp, out: seen.update(y=inp[0]))
    x = torch.randn(1, 7, 32)
    attn(x)
    v = attn.v(x).view(1, 7, 4, 8)
    y = seen["y"].view(1, 7, 4, 8)
    assert (y * v).sum(-1).abs().max() < 1e-5


def test_parallel_residual_block():
    torch.manual_seed(0)
    model = GPT(tiny(parallel_from=1, n_layer=2))
    assert [b.parallel for b in model.blocks] == [False, True]
    block, x = model.blocks[1], torch.randn(1, 5, 32)
    expected = x + block.attn(block.attn_norm(x)) + block.mlp(block.mlp_norm(x))
    assert torch.allclose(block(x, x), expected, atol=1e-6)


@pytest.mark.parametrize("doc_mask", [True, False])
def test_document_mask_blocks_attention_across_bos(doc_mask):
    torch.manual_seed(0)
    cfg = tiny(doc_mask=doc_mask, bos_id=0)
    model = GPT(cfg)
    x = torch.randint(1, cfg.vocab_size, (1, cfg.context))
    x[0, 6] = 0  # a document starts at position 6
    y = x.clone()
    y[0, :6] = (y[0, :6] + 1) % (cfg.vocab_size - 1) + 1  # change the previous document only
    same = torch.allclose(model(x)[0, 6:], model(y)[0, 6:], atol=1e-6)
    assert same == doc_mask


def test_document_mask_with_kv_cache_matches_full_pass():
    from lmgolf.model.gpt import KVCache
    torch.manual_seed(0)
    cfg = tiny(doc_mask=True, bos_id=0)
    model = GPT(cfg).eval()
    x = torch.randint(1, cfg.vocab_size, (1, 12))
    x[0, 0], x[0, 5], x[0, 9] = 0, 0, 0
    full = model(x)
    cache = KVCache(cfg.n_layer)
    steps = [model(x[:, :4], cache)] + [model(x[:, t:t + 1], cache) for t in range(4, 12)]
    assert torch.allclose(torch.cat(steps, dim=1), full, atol=1e-5)


@pytest.mark.parametrize("extra", [dict(bigram_buckets=97, bigram_dim=8), dict(smear_gate=True)])
def test_neighbour_mixing_stops_at_bos(extra):
    """Without attention (one layer whose attention output is zeroed), position t sees only tokens t
    and t-1 through BigramHash/SmearGate; across a BOS it must see nothing of the previous document."""
    torch.manual_seed(0)
    cfg = tiny(n_layer=1, bos_id=0, **extra)
    model = GPT(cfg)
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.3)
    torch.nn.init.zeros_(model.blocks[0].attn.proj.weight)
    x = torch.randint(1, cfg.vocab_size, (1, 10))
    x[0, 5] = 0
    y = x.clone()
    y[0, 4] = x[0, 4] % (cfg.vocab_size - 1) + 1
    a, b = model(x)[0], model(y)[0]
    assert torch.allclose(a[5], b[5], atol=1e-6)      # the BOS does not see the previous document
    assert not torch.allclose(a[4], b[4])             # the changed token itself does change
    z = x.clone()
    z[0, 2] = x[0, 2] % (cfg.vocab_size - 1) + 1
    assert not torch.allclose(model(z)[0, 3], a[3])   # inside a document, the next token sees it


def test_neighbour_mixing_with_kv_cache_matches_full_pass():
    from lmgolf.model.gpt import KVCache
    torch.manual_seed(0)
    cfg = tiny(bigram_buckets=31, bigram_dim=8, smear_gate=True, bos_id=0)
    model = GPT(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randint(1, cfg.vocab_size, (2, 12))
    x[:, 0], x[0, 6] = 0, 0
    cache = KVCache(cfg.n_layer)
    steps = [model(x[:, :5], cache)] + [model(x[:, t:t + 1], cache) for t in range(5, 12)]
    assert torch.allclose(torch.cat(steps, dim=1), model(x), atol=1e-5)


def test_bigram_hash_parameters_and_bucket_range():
    cfg = tiny(bigram_buckets=4096, bigram_dim=64, bos_id=0)
    count = count_module(GPT(cfg))
    assert count.params_by_group["bigram"] == 4096 * 64 + 64 * 32


def reference_attention(q, k, v, softcap=None):
    scores = q @ k.transpose(-2, -1) / q.size(-1) ** 0.5
    if softcap:
        scores = softcap * torch.tanh(scores / softcap)
    t = q.size(2)
    scores = scores.masked_fill(torch.ones(t, t).triu(1).bool(), float("-inf"))
    return scores.softmax(-1) @ v


@pytest.mark.parametrize("softcap", [None, 3.0])
def test_attention_core_matches_reference(softcap):
    from lmgolf.model.gpt import Attention
    attn = Attention(tiny(attn_softcap=softcap))
    q, k, v = (torch.randn(2, 4, 9, 8) for _ in range(3))
    assert torch.allclose(attn.attend(q, k, v, None), reference_attention(q, k, v, softcap), atol=1e-5)


def test_gqa_matches_reference_with_repeated_kv_heads():
    from lmgolf.model.gpt import Attention
    torch.manual_seed(0)
    attn = Attention(tiny(n_kv_head=2, positions="none"))
    x = torch.randn(1, 6, 32)
    q = attn.q(x).view(1, 6, 4, 8).transpose(1, 2)
    k = attn.k(x).view(1, 6, 2, 8).transpose(1, 2)[:, [0, 0, 1, 1]]
    v = attn.v(x).view(1, 6, 2, 8).transpose(1, 2)[:, [0, 0, 1, 1]]
    expected = attn.proj(reference_attention(q, k, v).transpose(1, 2).reshape(1, 6, 32))
    assert torch.allclose(attn(x), expected, atol=1e-5)


@pytest.mark.parametrize("kind,width", [("head", 4), ("element", 32)])
def test_attention_gate_parameters(kind, width):
    model = GPT(tiny(attn_gate=kind))
    gate = model.blocks[0].attn.gate
    assert gate.weight.shape == (width, 32) and gate.bias.shape == (width,)


def test_depth_recurrence_has_unique_blocks_parameters_only():
    flat = count_module(GPT(tiny(n_layer=4)))
    looped = count_module(GPT(tiny(n_layer=4, depth_pattern="0,1,2,3,0,1,2,3,0,1,2,3")))
    assert looped.params == flat.params  # 4 blocks x 3 passes store 4 blocks
    assert looped.attention_flops_per_token == 3 * flat.attention_flops_per_token
    block_linear = sum(m.weight.numel() for m in GPT(tiny()).blocks[0].modules() if isinstance(m, torch.nn.Linear))
    assert looped.matmul_weights - flat.matmul_weights == 8 * block_linear


def test_depth_recurrence_applies_blocks_in_order():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=2, depth_pattern="0,1,1"))
    x = torch.randint(0, 64, (1, 8))
    h = model.tok_emb(x)
    h0 = h
    for b in (0, 1, 1):
        h = model.blocks[b](h, h0)
    expected = torch.nn.functional.linear(model.final_norm(h), model.tok_emb.weight)
    assert torch.allclose(model(x), expected, atol=1e-5)


@pytest.mark.parametrize("pattern", ["0,1,2", "0,0", "a,b", "1"])
def test_bad_depth_patterns_are_refused(pattern):
    from lmgolf.errors import LmgolfError
    with pytest.raises(LmgolfError, match="depth_pattern"):
        tiny(depth_pattern=pattern).validate()


def test_factorized_embedding_parameters():
    cfg = tiny(embed_rank=8)
    count = count_module(GPT(cfg))
    assert count.params_by_group["embedding"] == 64 * 8 + 8 * 32
    full = count_module(GPT(tiny()))
    assert full.params - count.params == 64 * 32 - (64 * 8 + 8 * 32)


def test_value_residual_mixes_first_layer_values():
    torch.manual_seed(0)
    model = GPT(tiny(value_residual=True, n_layer=3, positions="none"))
    assert model.blocks[0].attn.v_mix is None and model.blocks[1].attn.v_mix.tolist() == [0.5, 0.5]
    assert count_module(model).params - count_module(GPT(tiny(n_layer=3))).params == 4
    from lmgolf.model.gpt import Shared
    x0 = torch.randn(1, 5, 32)
    shared = Shared()
    model.blocks[0].attn(x0, shared=shared)
    attn = model.blocks[1].attn
    with torch.no_grad():
        attn.v_mix.copy_(torch.tensor([0.0, 1.0]))  # all first-layer values
    x1 = torch.randn(1, 5, 32)
    first_v = model.blocks[0].attn.v(x0).view(1, 5, 4, 8).transpose(1, 2)
    q = attn.q(x1).view(1, 5, 4, 8).transpose(1, 2)
    k = attn.k(x1).view(1, 5, 4, 8).transpose(1, 2)
    expected = attn.proj(reference_attention(q, k, first_v).transpose(1, 2).reshape(1, 5, 32))
    assert torch.allclose(attn(x1, shared=shared), expected, atol=1e-5)


def test_moe_routes_top_k_and_balances():
    from lmgolf.model.gpt import MoE
    torch.manual_seed(0)
    cfg = tiny(moe_experts=4, moe_top_k=1)
    moe = MoE(cfg)
    x = torch.randn(2, 6, 32)
    out = moe(x)
    flat = x.reshape(-1, 32)
    chosen = moe.router(flat).argmax(-1)
    expected = torch.stack([moe.experts[int(e)](flat[i]) for i, e in enumerate(chosen)])  # top-1: weight 1
    assert torch.allclose(out.reshape(-1, 32), expected, atol=1e-5)
    assert moe.usage.sum().item() == pytest.approx(1.0)
    assert 0 < moe.aux_loss.item() < 4
    model = GPT(tiny(moe_experts=4, moe_top_k=2))
    assert count_module(model).params_by_group["mlp"] == 2 * (4 * 3 * 32 * 85 + 32 * 4)  # 2 layers of 4 SwiGLU experts (2/3 of 4 x 32) + router
    model(torch.randint(0, 64, (1, 8)))
    assert len(model.expert_usage()) == 2 and torch.is_tensor(model.extra_loss(torch.zeros(1, 8, dtype=torch.long)))


def test_ssm_state_does_not_cross_a_bos_with_document_masking():
    torch.manual_seed(0)
    cfg = tiny(ssm_layers="all", ssm_state=4, doc_mask=True, bos_id=0)
    model = GPT(cfg)
    x = torch.randint(1, cfg.vocab_size, (1, 12))
    x[0, 7] = 0
    y = x.clone()
    y[0, :7] = (y[0, :7] + 1) % (cfg.vocab_size - 1) + 1
    assert torch.allclose(model(x)[0, 7:], model(y)[0, 7:], atol=1e-5)
    unmasked = GPT(tiny(ssm_layers="all", ssm_state=4))
    assert not torch.allclose(unmasked(x)[0, 7:], unmasked(y)[0, 7:], atol=1e-5)


@pytest.mark.parametrize("kw", [dict(ssm_layers="all"), dict(ssm_layers="0", doc_mask=True, bos_id=0)])
def test_ssm_with_cache_matches_full_pass(kw):
    from lmgolf.model.gpt import KVCache
    torch.manual_seed(0)
    cfg = tiny(ssm_state=4, **kw)
    model = GPT(cfg).eval()
    x = torch.randint(1, cfg.vocab_size, (2, 12))
    x[:, 0], x[1, 6] = 0, 0
    cache = KVCache(cfg.n_layer)
    steps = [model(x[:, :5], cache)] + [model(x[:, t:t + 1], cache) for t in range(5, 12)]
    assert torch.allclose(torch.cat(steps, dim=1), model(x), atol=1e-4)


def test_hybrid_counts_attention_flops_only_for_attention_layers():
    hybrid = count_module(GPT(tiny(n_layer=4, ssm_layers="1,2")))
    flat = count_module(GPT(tiny(n_layer=4)))
    assert hybrid.attention_flops_per_token == flat.attention_flops_per_token // 2
    assert "ssm" in hybrid.params_by_group


def test_differential_attention_matches_a_reference():
    from lmgolf.model.gpt import Attention
    torch.manual_seed(0)
    cfg = tiny(diff_attn=True, positions="none")
    attn = Attention(cfg, layer=2)
    x = torch.randn(1, 7, 32)
    H, d = 4, 8
    q = attn.q(x).view(1, 7, H, d).transpose(1, 2)
    k = attn.k(x).view(1, 7, H, d).transpose(1, 2)
    v = attn.v(x).view(1, 7, H, d).transpose(1, 2)
    causal = torch.ones(7, 7).triu(1).bool()

    def softmax_map(qh, kh):
        return (qh @ kh.transpose(-2, -1) / (d // 2) ** 0.5).masked_fill(causal, float("-inf")).softmax(-1)

    lq1, lk1, lq2, lk2 = attn.lambdas
    lambda_init = 0.8 - 0.6 * torch.exp(torch.tensor(-0.3 * 2))
    lam = torch.exp(lq1 @ lk1) - torch.exp(lq2 @ lk2) + lambda_init
    a = softmax_map(q[..., :4], k[..., :4]) - lam * softmax_map(q[..., 4:], k[..., 4:])
    y = a @ v
    y = y / y.pow(2).mean(-1, keepdim=True).add(torch.finfo(y.dtype).eps).sqrt() * (1 - lambda_init)
    expected = attn.proj(y.transpose(1, 2).reshape(1, 7, 32))
    assert torch.allclose(attn(x), expected, atol=1e-5)


def test_early_exit_trains_jointly_and_picks_confident_exits():
    torch.manual_seed(0)
    cfg = tiny(exit_layers="1", n_layer=3)
    model = GPT(cfg)
    x = torch.randint(0, 64, (2, 10))
    logits = model(x)
    assert len(model.exit_logits) == 1
    expected_extra = torch.nn.functional.cross_entropy(model.exit_logits[0].view(-1, 64), x.view(-1))
    assert torch.allclose(model.extra_loss(x), expected_extra)
    model.eval()
    model.cfg.exit_threshold = 1.0  # nothing is that confident: every token goes the full depth
    assert torch.allclose(model(x), logits, atol=1e-6) and model.avg_depth == 3
    model.cfg.exit_threshold = 1e-9  # everything is: every token leaves at depth 1
    out = model(x)
    assert torch.allclose(out, model.exit_logits[0]) and model.avg_depth == 1


@pytest.mark.parametrize("family", ["linear", "mlp"])
def test_window_models_read_exactly_their_window(family):
    torch.manual_seed(0)
    cfg = tiny(family=family, window=3, bos_id=0, positions="none")
    model = GPT(cfg)
    assert len(model.blocks) == 0 and count_module(model).attention_flops_per_token == 0
    x = torch.randint(1, 64, (1, 12))
    base = model(x)[0]
    for changed, affected in ((4, {4, 5, 6}),):
        y = x.clone()
        y[0, changed] = x[0, changed] % 63 + 1
        moved = {t for t in range(12) if not torch.allclose(model(y)[0, t], base[t], atol=1e-6)}
        assert moved == affected
    x[0, 8] = 0  # a document starts at 8: position 8 and later must not see 6 or 7
    y = x.clone()
    y[0, 7] = x[0, 7] % 63 + 1
    assert torch.allclose(model(y)[0, 8:], model(x)[0, 8:], atol=1e-6)


def test_window_model_with_cache_matches_full_pass():
    from lmgolf.model.gpt import KVCache
    torch.manual_seed(0)
    cfg = tiny(family="mlp", window=4, bos_id=0)
    model = GPT(cfg).eval()
    x = torch.randint(1, 64, (2, 12))
    x[:, 0], x[0, 6] = 0, 0
    cache = KVCache(0)
    steps = [model(x[:, :5], cache)] + [model(x[:, t:t + 1], cache) for t in range(5, 12)]
    assert torch.allclose(torch.cat(steps, dim=1), model(x), atol=1e-5)


def test_linear_family_is_linear_in_the_window_embeddings():
    cfg = tiny(family="linear", window=2, positions="none")
    model = GPT(cfg)
    assert model.final_norm is None and count_module(model).params == 64 * 32 + 2 * 32 * 32


def test_swiglu_matches_a_reference_and_gelu_parameters():
    from lmgolf.model.gpt import MLP
    torch.manual_seed(0)
    cfg = tiny(mlp="swiglu")
    mlp = MLP(cfg)
    x = torch.randn(3, 32)
    w1, w3, w2 = mlp.gate.weight, mlp.up.weight, mlp.proj.weight
    silu = lambda a: a / (1 + torch.exp(-a))  # noqa: E731
    assert torch.allclose(mlp(x), (silu(x @ w1.T) * (x @ w3.T)) @ w2.T, atol=1e-5)
    swiglu, gelu = count_module(GPT(tiny(mlp="swiglu"))), count_module(GPT(tiny(mlp="gelu")))
    assert abs(swiglu.params_by_group["mlp"] - gelu.params_by_group["mlp"]) <= 2 * 3 * 32  # equal up to rounding


def test_recurrence_switches_on_during_training():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=2, depth_pattern="0,1,1", recur_start=0.5))
    x = torch.randint(0, 64, (1, 8))
    looped = model(x)
    model.recurrence_on = False
    plain = model(x)
    h = h0 = model.tok_emb(x)
    for b in (0, 1):
        h = model.blocks[b](h, h0)
    assert torch.allclose(plain, torch.nn.functional.linear(model.final_norm(h), model.tok_emb.weight), atol=1e-5)
    assert not torch.allclose(plain, looped)
