import numpy as np
import pytest
import torch
from torch import nn

from lmgolf.config import ModelConfig, PackPolicy
from lmgolf.packing.gptq import calibration_batches, collect_hessians, gptq_quantize, self_generated_batches
from lmgolf.model.gpt import GPT
from lmgolf.packing.prune import magnitude_masks
from lmgolf.quantize import STORAGES

ROWS, COLS, N = 64, 96, 2048
INT_WIDTHS = [f"int{b}-row" for b in range(8, 2, -1)]
GRIDS = INT_WIDTHS + ["ternary", "fp8-row"]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only contend


@pytest.fixture(scope="module")
def correlated():
    """A layer whose 96 inputs are strongly correlated: a rank-12 mixture plus a little noise."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N, 12, generator=g) @ torch.randn(12, COLS, generator=g) + 0.1 * torch.randn(N, COLS, generator=g)
    w = 0.05 * torch.randn(ROWS, COLS, generator=g)
    return x, w, 2 / N * x.T @ x


def output_error(x: torch.Tensor, w: torch.Tensor, q: torch.Tensor) -> float:
    return float((x @ q.T - x @ w.T).square().sum())


def restored(storage: str, grid, q: torch.Tensor) -> torch.Tensor:
    blobs, meta = grid.encode(q)
    return STORAGES[storage].dequantize(blobs, meta, list(q.shape)).reshape(q.shape)


# ---------------------------------------------------------------------------------------------------
# The quantizer


@pytest.mark.parametrize("storage", INT_WIDTHS)
def test_gptq_beats_round_to_nearest_on_the_layer_output_at_every_width(correlated, storage):
    x, w, h = correlated
    grid = STORAGES[storage].grid(w, PackPolicy())
    rtn, q = grid.snap(w, slice(None)), gptq_quantize(w, h, grid)
    assert output_error(x, w, q) < 0.5 * output_error(x, w, rtn)


@pytest.mark.parametrize("clip,storage", [("search", "int4-row"), ("std", "int3-row"), ("std", "int6-row")])
def test_gptq_beats_round_to_nearest_with_other_clip_rules(correlated, clip, storage):
    x, w, h = correlated
    grid = STORAGES[storage].grid(w, PackPolicy(clip=clip, clip_k=2.5))
    rtn, q = grid.snap(w, slice(None)), gptq_quantize(w, h, grid)
    assert output_error(x, w, q) < 0.5 * output_error(x, w, rtn)


@pytest.mark.parametrize("storage", ["ternary", "fp8-row"])
def test_gptq_does_not_lose_to_round_to_nearest_on_ternary_and_fp8(correlated, storage):
    x, w, h = correlated
    grid = STORAGES[storage].grid(w, PackPolicy())
    assert output_error(x, w, gptq_quantize(w, h, grid)) <= output_error(x, w, grid.snap(w, slice(None)))


@pytest.mark.parametrize("storage", GRIDS)
@pytest.mark.parametrize("act_order", [False, True])
def test_result_lies_exactly_on_the_grid(correlated, storage, act_order):
    x, w, h = correlated
    grid = STORAGES[storage].grid(w, PackPolicy())
    q = gptq_quantize(w, h, grid, act_order=act_order)
    assert q.dtype == torch.float32 and q.shape == w.shape
    assert torch.equal(restored(storage, grid, q), q)  # encode + dequantize round-trips bit for bit
    assert torch.equal(grid.snap(q, slice(None)), q)   # snapping again changes nothing
    assert not torch.equal(q, grid.snap(w, slice(None)))  # error feedback did change codes


def test_act_order_also_beats_round_to_nearest(correlated):
    x, w, h = correlated
    grid = STORAGES["int4-row"].grid(w, PackPolicy())
    q = gptq_quantize(w, h, grid, act_order=True)
    assert output_error(x, w, q) < 0.5 * output_error(x, w, grid.snap(w, slice(None)))


def test_lazy_batch_updates_do_not_change_the_result(correlated):
    """Blocks only reorder the same arithmetic (float64 inside), so every block size gives the same codes."""
    x, w, h = correlated
    grid = STORAGES["int4-row"].grid(w, PackPolicy())
    reference = gptq_quantize(w, h, grid, block=128)
    for block in (1, 7, 32):
        assert torch.equal(gptq_quantize(w, h, grid, block=block), reference)
    assert torch.equal(gptq_quantize(w, h, grid, block=1, act_order=True),
                       gptq_quantize(w, h, grid, block=40, act_order=True))


def test_dead_inputs_get_zero_weights(correlated):
    x, w, _ = correlated
    x = x.clone()
    x[:, [3, 50]] = 0
    h = 2 / N * x.T @ x
    grid = STORAGES["int6-row"].grid(w, PackPolicy())
    q = gptq_quantize(w, h, grid)
    assert torch.isfinite(q).all() and (q[:, [3, 50]] == 0).all()
    assert torch.equal(restored("int6-row", grid, q), q)
    assert output_error(x, w, q) < output_error(x, w, grid.snap(w, slice(None)))


def test_a_hessian_that_is_not_positive_definite_raises_the_damping_instead_of_giving_nan(correlated):
    x, w, h = correlated
    grid = STORAGES["int4-row"].grid(w, PackPolicy())
    v = torch.nn.functional.normalize(torch.randn(COLS, generator=torch.Generator().manual_seed(1)), dim=0)
    indefinite = h - 20 * h.diagonal().mean() * torch.outer(v, v)  # one large negative eigenvalue
    singular = h[:8, :8].repeat(12, 12)                              # rank 8 at most
    for bad, damp in ((indefinite, 0.01), (singular, 1e-12), (torch.zeros(COLS, COLS), 0.01)):
        q = gptq_quantize(w, bad, grid, damp=damp)
        assert torch.isfinite(q).all() and torch.equal(restored("int4-row", grid, q), q)
    with pytest.raises(ValueError):
        gptq_quantize(w, torch.full((COLS, COLS), float("nan")), grid)
    with pytest.raises(ValueError):
        gptq_quantize(w, h[:10, :10], grid)


def test_pruned_weights_stay_zero_and_their_error_is_fed_back(correlated):
    x, w, h = correlated
    keep = magnitude_masks({"w": w}, 0.5)["w"]
    grid = STORAGES["int5-row"].grid(w, PackPolicy())
    for act_order in (False, True):
        q = gptq_quantize(w, h, grid, act_order=act_order, keep=keep)
        assert (q[~keep] == 0).all() and torch.equal(restored("int5-row", grid, q), q)
        pruned_rtn = torch.where(keep, grid.snap(w, slice(None)), torch.zeros_like(w))
        assert output_error(x, w, q) < 0.5 * output_error(x, w, pruned_rtn)


# ---------------------------------------------------------------------------------------------------
# Calibration data and Hessians


def tiny_gpt(**overrides) -> GPT:
    fields = dict(vocab_size=32, n_layer=2, d_model=16, n_head=2, context=16, mlp="gelu", bos_id=0)
    torch.manual_seed(0)
    return GPT(ModelConfig(**{**fields, **overrides}))


def test_calibration_batches_are_reproducible_random_windows():
    tokens = np.arange(1000, dtype=np.uint16)
    batches = calibration_batches(tokens, n_tokens=100, context=16, batch=4, seed=3)
    assert [tuple(b.shape) for b in batches] == [(4, 16), (3, 16)] and batches[0].dtype == torch.long
    rows = torch.cat(batches)
    assert (rows[:, 1:] - rows[:, :-1] == 1).all() and int(rows.max()) < 1000  # windows of consecutive tokens
    assert all(torch.equal(a, b) for a, b in zip(batches, calibration_batches(tokens, 100, 16, 4, seed=3)))
    assert not torch.equal(rows, torch.cat(calibration_batches(tokens, 100, 16, 4, seed=4)))
    assert calibration_batches(tokens[:10], 30, 16)[0].shape == (2, 10)  # shorter than the context: whole array
    with pytest.raises(ValueError):
        calibration_batches(tokens[:0], 30, 16)


def test_hessians_of_a_tiny_gpt_are_spd_per_linear_and_match_a_direct_computation():
    model = tiny_gpt(init_std=0.5, embed_init_std=0.5)  # nonlinear enough that every input spans its space
    tokens = np.random.default_rng(0).integers(0, 32, 5000)
    batches = calibration_batches(tokens, 512, 16)
    hessians = collect_hessians(model, batches)
    linears = {f"{n}.weight": m for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert set(hessians) == set(linears) and len(hessians) == 12
    for name, h in hessians.items():
        assert h.dtype == torch.float32 and h.shape == (linears[name].in_features,) * 2
        assert torch.allclose(h, h.T)
        eigenvalues = torch.linalg.eigvalsh(h.double())
        assert eigenvalues.min() > 1e-4 * eigenvalues.max()
    with torch.no_grad():
        x = model.blocks[0].attn_norm(model.tok_emb(torch.cat(batches))).reshape(-1, 16).double()  # the first query's input
    assert torch.allclose(hessians["blocks.0.attn.q.weight"].double(), 2 / x.shape[0] * x.T @ x, rtol=1e-5, atol=1e-7)
    only = collect_hessians(model, batches, names=["blocks.1.mlp.proj.weight", "no.such.weight"])
    assert list(only) == ["blocks.1.mlp.proj.weight"]
    assert torch.allclose(only["blocks.1.mlp.proj.weight"], hessians["blocks.1.mlp.proj.weight"])


class Twice(nn.Module):
    """One Linear applied twice per pass, like a block under depth recurrence."""

    def __init__(self):
        super().__init__()
        self.emb, self.lin = nn.Embedding(10, 6), nn.Linear(6, 6)

    def forward(self, idx):
        return self.lin(self.lin(self.emb(idx)))


def test_hessians_count_every_application_of_a_repeated_layer():
    torch.manual_seed(0)
    model = Twice()
    batches = [torch.randint(0, 10, (3, 5)), torch.randint(0, 10, (2, 5))]
    h = collect_hessians(model, batches)["lin.weight"]
    with torch.no_grad():
        first = model.emb(torch.cat([b.reshape(-1) for b in batches])).double()
        second = model.lin(first.float()).double()
    direct = (first.T @ first + second.T @ second) * 2 / (2 * first.shape[0])
    assert torch.allclose(h.double(), direct, rtol=1e-5, atol=1e-7)


def test_hooks_are_removed_and_the_mode_restored_even_on_error():
    model = tiny_gpt().train()
    collect_hessians(model, [torch.zeros(1, 4, dtype=torch.long)])
    with pytest.raises(IndexError):
        collect_hessians(model, [torch.full((1, 4), 99)])  # not a token id: the embedding raises
    assert model.training
    assert all(not m._forward_hooks for m in model.modules())


@pytest.mark.parametrize("overrides", [{}, dict(depth_pattern="0,1,0,1")])
def test_self_generated_text_is_sampled_from_the_model_at_temperature_one(overrides):
    model = tiny_gpt(init_std=0.3, embed_init_std=0.3, **overrides).double().eval()
    batches = self_generated_batches(model, n_tokens=100, context=16, bos_id=0, seed=5, batch=4)
    assert [tuple(b.shape) for b in batches] == [(4, 16), (3, 16)]
    rows = torch.cat(batches)
    assert (rows[:, 0] == 0).all() and 0 <= int(rows.min()) and int(rows.max()) < 32
    assert len(set(rows[:, 1:].reshape(-1).tolist())) > 10  # varied text, not one repeated token
    # the same draws as plain full-context sampling with the same generator: the cache changes nothing
    generator = torch.Generator().manual_seed(5)
    with torch.no_grad():
        for batch in batches:
            ids = batch[:, :1]
            for _ in range(15):
                probs = model(ids)[:, -1].float().softmax(-1)
                ids = torch.cat((ids, torch.multinomial(probs, 1, generator=generator)), dim=1)
            assert torch.equal(ids, batch)
    assert not torch.equal(rows, torch.cat(self_generated_batches(model, 100, 16, 0, seed=6, batch=4)))
    assert self_generated_batches(model, 40, 64, 0)[0].shape == (3, 16)  # capped at the model's context
