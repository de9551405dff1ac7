import pytest
import torch

from lmgolf.config import ModelConfig
from lmgolf.errors import LmgolfError
from lmgolf.serve.generate import filter_logits, generate, stream
from lmgolf.model.gpt import GPT, KVCache

PROMPT = [3, 14, 15, 9, 26]
SHAPES = {"rope-mha": dict(positions="rope", n_kv_head=None),
          "rope-gqa": dict(positions="rope", n_kv_head=2),
          "learned-mha": dict(positions="learned", n_kv_head=None),
          "learned-gqa": dict(positions="learned", n_kv_head=1)}


def tiny(context: int = 64, **overrides) -> GPT:
    # a large init gives decisive, varied greedy continuations instead of one repeated token
    fields = dict(vocab_size=50, n_layer=2, d_model=64, n_head=4, context=context, mlp="gelu", init_std=0.5,
                  embed_init_std=0.5, unet_skips=True, resid_mix=True)
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**fields, **overrides})).eval()


@pytest.mark.parametrize("shape", SHAPES)
def test_greedy_with_cache_equals_greedy_without(shape):
    model = tiny(**SHAPES[shape]).double()  # float64: no near-tie of the random model can flip between the two paths
    cached = generate(model, PROMPT, 50, temperature=0)
    full = generate(model, PROMPT, 50, temperature=0, use_cache=False)
    assert len(cached) == 50 and cached == full
    assert len(set(cached)) > 10  # not a degenerate repetition


@pytest.mark.parametrize("shape", SHAPES)
def test_incremental_logits_equal_a_full_forward_pass(shape):
    model = tiny(**SHAPES[shape], init_std=0.02, embed_init_std=0.02)  # logits of order 1, where atol=1e-5 is tight
    ids = torch.randint(0, 50, (1, 48), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        full = model(ids)[0]
        cache = KVCache()
        steps = [model(ids[:, :8], cache)[0]] + [model(ids[:, t:t + 1], cache)[0] for t in range(8, 48)]
    assert cache.length == 48
    assert torch.allclose(torch.cat(steps), full, atol=1e-5, rtol=0)


def visible_history(prompt: int, new: int, context: int, use_cache: bool) -> list[int]:
    """How many of the latest tokens each step's prediction sees: without the cache the last `context`;
    with it, a cache that grows one token per step and, when full, restarts from the last context // 2."""
    seen, out = min(prompt, context), []
    for step in range(new):
        if step:
            seen = min(prompt + step, context) if not use_cache else seen + 1 if seen < context else context // 2
        out.append(seen)
    return out


@pytest.mark.parametrize("positions", ["learned", "rope"])
@pytest.mark.parametrize("use_cache", [True, False])
def test_generation_slides_past_the_context(positions, use_cache):
    """Past the context, each token is the greedy choice of a full forward pass over exactly the latest
    tokens the decoder keeps (a learned position table would refuse more than the context)."""
    model = tiny(context=16, positions=positions).double()
    prompt = list(range(20))
    out = generate(model, prompt, 40, temperature=0, use_cache=use_cache)
    ids = list(prompt)
    for token, seen in zip(out, visible_history(len(prompt), 40, 16, use_cache)):
        with torch.no_grad():
            assert token == int(model(torch.tensor([ids[-seen:]]))[0, -1].argmax())
        ids.append(token)
    assert len(out) == 40


def test_full_cache_is_rebuilt_from_half_a_window():
    model = tiny(context=16, positions="learned")
    ids = PROMPT + generate(model, PROMPT, 11, temperature=0)  # 16 tokens: the first new one fills the cache
    out = generate(model, ids, 2, temperature=0)
    with torch.no_grad():
        first = int(model(torch.tensor([ids]))[0, -1].argmax())
        second = int(model(torch.tensor([(ids + [first])[-8:]]))[0, -1].argmax())
    assert out == [first, second]


def test_sampling_is_reproducible_and_varies_with_the_seed():
    model = tiny()
    a = generate(model, PROMPT, 30, temperature=1.5, seed=7)
    assert a == generate(model, PROMPT, 30, temperature=1.5, seed=7)
    assert a == generate(model, PROMPT, 30, temperature=1.5, seed=7, use_cache=False)
    others = {tuple(generate(model, PROMPT, 30, temperature=1.5, seed=s)) for s in range(5)}
    assert len(others) > 1


def test_top_k_1_and_tiny_top_p_are_greedy():
    model = tiny()
    greedy = generate(model, PROMPT, 30, temperature=0)
    assert generate(model, PROMPT, 30, temperature=1.0, top_k=1, seed=3) == greedy
    assert generate(model, PROMPT, 30, temperature=1.0, top_p=1e-6, seed=3) == greedy


def test_filter_logits_keeps_the_nucleus():
    logits = torch.tensor([0.1, 0.5, 0.2, 0.15, 0.05]).log()
    kept = filter_logits(logits, None, 0.7).isfinite()
    assert kept.tolist() == [False, True, True, False, False]  # 0.5 + 0.2 reaches 0.7
    kept = filter_logits(logits, 2, 0.3).isfinite()
    assert kept.tolist() == [False, True, False, False, False]
    assert filter_logits(logits, 10, 1.0).isfinite().all()


def test_stop_id_ends_generation_and_is_not_returned():
    model = tiny()
    greedy = generate(model, PROMPT, 30, temperature=0)
    stop = greedy[10]
    first = greedy.index(stop)
    assert generate(model, PROMPT, 30, temperature=0, stop_id=stop) == greedy[:first]


def test_stream_yields_what_generate_returns():
    model = tiny()
    tokens = stream(model, PROMPT, 12, temperature=0.9, seed=1)
    assert next(tokens) is not None and torch.is_grad_enabled()
    streamed = list(stream(model, PROMPT, 12, temperature=0.9, seed=1))
    assert streamed == generate(model, PROMPT, 12, temperature=0.9, seed=1)
    assert generate(model, PROMPT, 0) == []


@pytest.mark.parametrize("field, kwargs", [
    ("max_new_tokens", dict(max_new_tokens=-1)), ("temperature", dict(temperature=-0.5)),
    ("top_k", dict(top_k=0)), ("top_p", dict(top_p=0.0)), ("top_p", dict(top_p=1.5)),
    ("prompt_ids", dict(prompt_ids=[])),
])
def test_bad_arguments_name_the_field(field, kwargs):
    args = {"prompt_ids": PROMPT, "max_new_tokens": 5, **kwargs}
    with pytest.raises(LmgolfError, match=f"^{field}:"):
        stream(tiny(), **args)  # refused before the first token is asked for


def test_cached_generation_with_depth_recurrence():
    from lmgolf.config import ModelConfig
    from lmgolf.serve.generate import generate
    from lmgolf.model.gpt import GPT
    torch.manual_seed(0)
    model = GPT(ModelConfig(vocab_size=32, n_layer=2, d_model=16, n_head=2, context=16, depth_pattern="0,1,0,1")).eval()
    cached = generate(model, [1, 2, 3], 10, temperature=0.0, seed=0)
    uncached = generate(model, [1, 2, 3], 10, temperature=0.0, seed=0, use_cache=False)
    assert cached == uncached and len(cached) == 10
