import pytest
import torch
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lmgolf.config import ModelConfig, load_config, load_preset
from lmgolf.model.count import count_config, count_module
from lmgolf.model.context import Context, KVCache
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
    # the counter sees matrix multiplies only, not the elementwise SSM scan
    assert counter.get_total_flops() * 3 == (count.train_flops_per_token - count.scan_flops_per_token) * x.numel()


def formula_params(cfg: ModelConfig) -> int:
    """The parameter count written from the config alone, option by option (docs/architectures.md)."""
    d, V, hd, h, kv, b = cfg.d_model, cfg.vocab_size, cfg.head_size, cfg.n_head, cfg.kv_heads, cfg.bias
    linear = lambda i, o, bias=b: i * o + (o if bias else 0)  # noqa: E731
    norm = (d if cfg.norm_gain else 0) + (d if cfg.norm_gain and cfg.bias and cfg.norm == "layernorm" else 0)
    mlp = linear(d, cfg.hidden) * (2 if cfg.mlp == "swiglu" else 1) + linear(cfg.hidden, d)
    if cfg.moe_experts:
        mlp = cfg.moe_experts * mlp + d * cfg.moe_experts
    total = V * (cfg.embed_rank or d) + (cfg.embed_rank * d if cfg.embed_rank else 0)
    total += cfg.context * d if cfg.positions == "learned" else 0
    total += cfg.bigram_buckets * cfg.bigram_dim + cfg.bigram_dim * d if cfg.bigram_buckets else 0
    total += d + 1 if cfg.smear_gate else 0
    if cfg.family == "linear":
        return total + linear(cfg.window * d, d) + (0 if cfg.tie_embeddings else V * d)
    if cfg.family == "mlp":
        total += linear(cfg.window * d, cfg.hidden) + linear(cfg.hidden, d)
    for layer in range(cfg.n_layer if cfg.family == "transformer" else 0):
        total += 2 * norm + mlp + (2 * d if cfg.output_scales else 0) + (2 * d if cfg.resid_mix else 0)
        if layer in cfg.ssm_blocks:
            w, n, r = cfg.ssm_expand * d, cfg.ssm_state, -(-d // 16)
            total += d * 2 * w + w * cfg.ssm_conv + w + w * (r + 2 * n) + r * w + w + w * n + w + w * d
            continue
        total += linear(d, h * hd) + 2 * linear(d, kv * hd) + linear(h * hd, d)
        total += h if cfg.q_gain is not None else 0
        total += 2 * hd if cfg.diff_attn else 0  # four vectors of hd / 2
        total += 2 if cfg.value_residual and layer > 0 else 0
        gate = {"none": 0, "head": h, "element": h * hd}[cfg.attn_gate]
        total += linear(d, gate, True) if gate else 0
    depth = len(cfg.layer_order) if cfg.family == "transformer" else 0
    total += min(depth // 2, depth - depth // 2) * d if cfg.unet_skips else 0
    total += norm if cfg.norm_position == "pre" else 0
    return total + (0 if cfg.tie_embeddings else V * d)


@pytest.mark.parametrize("kw", VARIANTS + [dict(norm="layernorm", bias=True, n_layer=3, ssm_layers="1", moe_experts=3,
                                                 moe_top_k=1, mlp="gelu", value_residual=True, attn_gate="element")])
def test_counted_parameters_match_an_independent_formula(kw):
    cfg = tiny(**kw)
    count = count_module(GPT(cfg))
    assert count.params == formula_params(cfg) == sum(p.numel() for p in GPT(cfg).parameters())


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
    from lmgolf.model.positions import Rotary
    x = torch.randn(2, 3, 11, 8)
    assert torch.allclose(Rotary(dims, 10000.0)(x), reference_rope(x, dims), atol=1e-5)


def test_nope_every_k_layers_drops_rotary_there():
    model = GPT(tiny(n_layer=6, nope_every=3, rope_dims=4))
    assert [b.attn.rotary is None for b in model.blocks] == [False, False, True, False, False, True]
    assert model.blocks[0].attn.rotary.dims == 4


def test_ln_scale_and_post_norm_structure():
    torch.manual_seed(0)
    model = GPT(tiny(n_layer=3, ln_scale=True))
    assert [getattr(b.attn_norm, "scale", 1.0) for b in model.blocks] == pytest.approx([1.0, 2 ** -0.5, 3 ** -0.5])
    x = torch.randn(1, 5, 32)
    norm = model.blocks[2].mlp_norm
    assert torch.allclose(norm(x), torch.nn.functional.rms_norm(x, (32,), norm.weight, 1e-5) / 3 ** 0.5, atol=1e-6)
    post = GPT(tiny(norm_position="post"))
    assert post.final_norm is None
    block = post.blocks[0]
    h = block.attn_norm(x + block.attn(x, Context()))
    assert torch.allclose(block(x, Context()), block.mlp_norm(h + block.mlp(h)), atol=1e-6)


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
    attn(x, Context())
    v = attn.v(x).view(1, 7, 4, 8)
    y = seen["y"].view(1, 7, 4, 8)
    assert (y * v).sum(-1).abs().max() < 1e-5


def test_parallel_residual_block():
    torch.manual_seed(0)
    model = GPT(tiny(parallel_from=1, n_layer=2))
    from lmgolf.model.gpt import ParallelBlock
    assert [isinstance(b, ParallelBlock) for b in model.blocks] == [False, True]
    block, x = model.blocks[1], torch.randn(1, 5, 32)
    expected = x + block.attn(block.attn_norm(x), Context()) + block.mlp(block.mlp_norm(x))
    assert torch.allclose(block(x, Context()), expected, atol=1e-6)


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
    torch.manual_seed(0)
    cfg = tiny(doc_mask=True, bos_id=0)
    model = GPT(cfg).eval()
    x = torch.randint(1, cfg.vocab_size, (1, 12))
    x[0, 0], x[0, 5], x[0, 9] = 0, 0, 0
    full = model(x)
    cache = KVCache()
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
    torch.manual_seed(0)
    cfg = tiny(bigram_buckets=31, bigram_dim=8, smear_gate=True, bos_id=0)
    model = GPT(cfg).eval()
    for p in model.parameters():
        torch.nn.init.normal_(p, std=0.2)
    x = torch.randint(1, cfg.vocab_size, (2, 12))
    x[:, 0], x[0, 6] = 0, 0
    cache = KVCache()
    steps = [model(x[:, :5], cache)] + [model(x[:, t:t + 1], cache) for t in range(5, 12)]
    assert torch.allclose(torch.cat(steps, dim=1), model(x), atol=1e-5)


def test_bigram_hash_parameters_and_bucket_range():
    cfg = tiny(bigram_buckets=4096, bigram_dim=64, bos_id=0)
    model = GPT(cfg)
    assert count_module(model).params_by_group["bigram"] == 4096 * 64 + 64 * 32
    vocab = 50257  # the largest vocabulary of the presets: every pair of ids lands in [0, buckets)
    cur, prev = torch.meshgrid(torch.arange(0, vocab, 97), torch.arange(0, vocab, 89), indexing="ij")
    buckets = model.bigram.bucket(cur, prev)
    assert buckets.min() >= 0 and buckets.max() < 4096
    assert len(buckets.unique()) > 0.9 * 4096  # and they spread over the whole table


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
    assert torch.allclose(attn(x, Context()), expected, atol=1e-5)


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
    for b in (0, 1, 1):
        h = model.blocks[b](h, Context())
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
    x0 = torch.randn(1, 5, 32)
    ctx = Context()
    model.blocks[0].attn(x0, ctx)
    attn = model.blocks[1].attn
    with torch.no_grad():
        attn.v_mix.copy_(torch.tensor([0.0, 1.0]))  # all first-layer values
    x1 = torch.randn(1, 5, 32)
    first_v = model.blocks[0].attn.v(x0).view(1, 5, 4, 8).transpose(1, 2)
    q = attn.q(x1).view(1, 5, 4, 8).transpose(1, 2)
    k = attn.k(x1).view(1, 5, 4, 8).transpose(1, 2)
    expected = attn.proj(reference_attention(q, k, first_v).transpose(1, 2).reshape(1, 5, 32))
    assert torch.allclose(attn(x1, ctx), expected, atol=1e-5)


def test_moe_routes_top_k():
    from lmgolf.model.gpt import MoE
    torch.manual_seed(0)
    cfg = tiny(moe_experts=4, moe_top_k=2)
    moe = MoE(cfg)
    x = torch.randn(2, 6, 32)
    ctx = Context()
    out = moe(x, ctx)
    flat = x.reshape(-1, 32)
    probs = moe.router(flat).softmax(-1)
    top = probs.topk(2, dim=-1)
    expected = torch.stack([sum(w / top.values[i].sum() * moe.experts[int(e)](flat[i])
                                for w, e in zip(top.values[i], top.indices[i])) for i in range(len(flat))])
    assert torch.allclose(out.reshape(-1, 32), expected, atol=1e-5)
    routed = torch.zeros(4).index_add_(0, top.indices.reshape(-1), torch.ones(24)) / 24
    assert torch.allclose(ctx.expert_usage[0], routed)
    assert torch.allclose(ctx.balance_losses[0], 4 * (routed * probs.mean(0)).sum())  # the Switch loss
    model = GPT(tiny(moe_experts=4, moe_top_k=2))
    assert count_module(model).params_by_group["mlp"] == 2 * (4 * 3 * 32 * 85 + 32 * 4)  # 2 layers of 4 SwiGLU experts (2/3 of 4 x 32) + router
    out = model(torch.randint(0, 64, (1, 8)), aux=True)
    assert out.expert_usage.shape == (2, 4) and out.aux_loss.item() > 0
    assert torch.allclose(model.extra_loss(out, torch.zeros(1, 8, dtype=torch.long)), out.aux_loss)


def test_moe_load_balance_loss_balances_the_experts():
    """A router that sends nearly every token to one expert, trained on the load-balance loss alone,
    spreads the tokens over the experts."""
    from lmgolf.model.gpt import MoE
    torch.manual_seed(0)
    moe = MoE(tiny(moe_experts=4, moe_top_k=1))
    x = torch.randn(256, 32) + 0.3
    with torch.no_grad():
        moe.router.weight.normal_(std=0.01)
        moe.router.weight[0] += 0.5  # expert 0 wins almost every token

    def usage_and_loss():
        ctx = Context()
        moe(x, ctx)
        return ctx.expert_usage[0], ctx.balance_losses[0]
    before, _ = usage_and_loss()
    assert before.max() > 0.9
    opt = torch.optim.Adam(moe.router.parameters(), lr=0.02)
    for _ in range(200):
        opt.zero_grad()
        usage_and_loss()[1].backward()
        opt.step()
    after, loss = usage_and_loss()
    assert after.max() < 0.3 and after.min() > 0.2 and loss.item() < 1.01  # 1: perfectly balanced


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
    torch.manual_seed(0)
    cfg = tiny(ssm_state=4, **kw)
    model = GPT(cfg).eval()
    x = torch.randint(1, cfg.vocab_size, (2, 12))
    x[:, 0], x[1, 6] = 0, 0
    cache = KVCache()
    steps = [model(x[:, :5], cache)] + [model(x[:, t:t + 1], cache) for t in range(5, 12)]
    assert torch.allclose(torch.cat(steps, dim=1), model(x), atol=1e-4)


def test_hybrid_counts_attention_flops_only_for_attention_layers():
    hybrid = count_module(GPT(tiny(n_layer=4, ssm_layers="1,2")))
    flat = count_module(GPT(tiny(n_layer=4)))
    assert hybrid.attention_flops_per_token == flat.attention_flops_per_token // 2
    assert "ssm" in hybrid.params_by_group and flat.scan_flops_per_token == 0


def test_ssm_scan_flops_follow_the_reference_formula():
    """VMamba's flops_selective_scan_fn(with_D, with_Z): 9 x width x state + 2 x width per token forward,
    per SSM application (depth recurrence counts each use)."""
    cfg = tiny(n_layer=2, ssm_layers="0", ssm_state=4, ssm_expand=2, depth_pattern="0,1,0")
    count = count_module(GPT(cfg))
    width = 2 * 32
    assert count.scan_flops_per_token == 3 * 2 * (9 * width * 4 + 2 * width)
    assert count.train_flops_per_token == 6 * count.matmul_weights + count.attention_flops_per_token + count.scan_flops_per_token


@pytest.mark.parametrize("kw,attention,scan", [(dict(), True, False), (dict(ssm_layers="all"), False, True),
                                               (dict(family="linear", window=2), False, False),
                                               (dict(family="mlp", window=2), False, False)])
def test_format_count_prints_the_terms_it_adds(kw, attention, scan):
    from lmgolf.model.count import format_count
    cfg = tiny(**kw)
    count = count_config(cfg)
    text = format_count(cfg, count)
    assert ("attention scores" in text) == attention and ("SSM scan" in text) == scan
    assert f"= {count.train_flops_per_token:,}" in text


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
    assert torch.allclose(attn(x, Context()), expected, atol=1e-5)


def test_early_exit_trains_jointly_and_picks_confident_exits():
    torch.manual_seed(0)
    cfg = tiny(exit_layers="1", n_layer=3)
    model = GPT(cfg)
    x = torch.randint(0, 64, (2, 10))
    out = model(x, aux=True)
    assert len(out.exit_logits) == 1 and out.mean_depth is None
    expected_extra = torch.nn.functional.cross_entropy(out.exit_logits[0].view(-1, 64), x.view(-1))
    assert torch.allclose(model.extra_loss(out, x), expected_extra)
    model.eval()
    model.cfg.exit_threshold = 1.0  # nothing is that confident: every token goes the full depth
    full = model(x, aux=True)
    assert torch.allclose(full.logits, out.logits, atol=1e-6) and full.mean_depth.item() == 3
    model.cfg.exit_threshold = 1e-9  # everything is: every token leaves at depth 1
    early = model(x, aux=True)
    assert torch.allclose(early.logits, early.exit_logits[0]) and early.mean_depth.item() == 1
    assert torch.equal(model(x), early.logits)  # the plain call scores with the exits too


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
    torch.manual_seed(0)
    cfg = tiny(family="mlp", window=4, bos_id=0)
    model = GPT(cfg).eval()
    x = torch.randint(1, 64, (2, 12))
    x[:, 0], x[0, 6] = 0, 0
    cache = KVCache()
    steps = [model(x[:, :5], cache)] + [model(x[:, t:t + 1], cache) for t in range(5, 12)]
    assert torch.allclose(torch.cat(steps, dim=1), model(x), atol=1e-5)


def test_linear_family_is_linear_in_the_window_embeddings():
    torch.manual_seed(0)
    cfg = tiny(family="linear", window=2, positions="none")
    model = GPT(cfg)
    assert model.final_norm is None and count_module(model).params == 64 * 32 + 2 * 32 * 32
    idx = torch.randint(0, 64, (2, 9))

    def logits_of(embeddings):  # the model after its embedding lookup
        return model.output(model.window_net(embeddings, Context(idx, spec=model.context_spec)))

    a, b = torch.randn(2, 9, 32), torch.randn(2, 9, 32)
    assert torch.allclose(logits_of(2 * a - 3 * b), 2 * logits_of(a) - 3 * logits_of(b), atol=1e-4)
    assert torch.allclose(model(idx), logits_of(model.tok_emb(idx)), atol=1e-6)


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
    h = model.tok_emb(x)
    for b in (0, 1):
        h = model.blocks[b](h, Context())
    assert torch.allclose(plain, torch.nn.functional.linear(model.final_norm(h), model.tok_emb.weight), atol=1e-5)
    assert not torch.allclose(plain, looped)


def test_aux_outputs_come_back_through_qat_and_compile():
    """The trainer calls net(x, aux=True) where net may be the QAT wrapper and torch.compile'd: the
    auxiliary outputs must come back through both, equal to the eager model's."""
    from lmgolf.config import PackPolicy
    from lmgolf.training.qat import QAT
    torch.manual_seed(0)
    model = GPT(tiny(moe_experts=3, moe_top_k=1, exit_layers="1", n_layer=2))
    x = torch.randint(0, 64, (2, 16))
    eager = model(x, aux=True)
    torch._dynamo.reset()
    compiled = torch.compile(QAT(model, PackPolicy(), enabled=False), backend="aot_eager")
    out = compiled(x, aux=True)
    assert torch.allclose(out.logits, eager.logits, atol=1e-5) and torch.allclose(out.aux_loss, eager.aux_loss)
    assert torch.allclose(out.exit_logits[0], eager.exit_logits[0], atol=1e-5)
    assert torch.equal(out.expert_usage, eager.expert_usage)
    loss = model.extra_loss(out, x)
    loss.backward()
    assert model.blocks[0].mlp.router.weight.grad is not None  # the load-balance loss trains the router
    assert not any(torch.is_tensor(v) for v in vars(model).values())  # nothing of the pass stays on the model


def test_evaluation_reports_the_mean_exit_depth():
    import numpy as np
    from lmgolf.eval.evaluate import evaluate
    torch.manual_seed(0)
    model = GPT(tiny(exit_layers="1", n_layer=3, exit_threshold=1e-9))  # every token leaves at depth 1
    tokens = np.random.default_rng(0).integers(0, 64, size=60)
    assert evaluate(model, tokens, np.ones(60, dtype=np.int64), 16, progress=False).avg_depth == 1
    model.cfg.exit_threshold = 0.0
    assert evaluate(model, tokens, np.ones(60, dtype=np.int64), 16, progress=False).avg_depth is None
