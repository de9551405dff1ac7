import pytest
import torch

from lmgolf.config import PackPolicy
from lmgolf.packing.prune import apply_masks, lowrank_correction, magnitude_masks
from lmgolf.quantize import STORAGES

SHAPES = [(1, 1), (3, 7), (17, 129), (5,), (64, 65), (2, 3, 5)]
SPARSITIES = [0.0, 0.1, 0.37, 0.5, 0.999]


pytestmark = pytest.mark.usefixtures("one_thread")  # tiny models: extra threads only contend


def weights(seed: int = 0, ties: bool = False) -> dict[str, torch.Tensor]:
    """Odd sizes; with ties, only three magnitudes (with random signs), so most values are equal."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for i, shape in enumerate(SHAPES):
        w = torch.randn(shape, generator=g) * 10 ** (i - 3)
        if ties:
            w = (torch.randint(1, 4, shape, generator=g) * torch.randint(0, 2, shape, generator=g).mul(2).sub(1)).float()
        out[f"t{i}"] = w
    return out


def check_lowest_dropped(tensors: dict, masks: dict) -> None:
    dropped = torch.cat([t.abs().reshape(-1)[~m.reshape(-1)] for t, m in zip(tensors.values(), masks.values())])
    kept = torch.cat([t.abs().reshape(-1)[m.reshape(-1)] for t, m in zip(tensors.values(), masks.values())])
    if dropped.numel() and kept.numel():
        assert dropped.max() <= kept.min()


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_tensor_scope_prunes_exactly_the_share_of_each_tensor(sparsity, ties):
    tensors = weights(ties=ties)
    masks = magnitude_masks(tensors, sparsity, "tensor")
    for name, t in tensors.items():
        m = masks[name]
        assert m.dtype == torch.bool and m.shape == t.shape
        assert int((~m).sum()) == round(sparsity * t.numel())
        check_lowest_dropped({name: t}, {name: m})
        pruned = apply_masks({name: t}, masks)[name]
        assert int((pruned == 0).sum()) == round(sparsity * t.numel())  # no weight was zero before


@pytest.mark.parametrize("ties", [False, True])
@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_global_scope_prunes_exactly_the_share_of_all_chosen_weights(sparsity, ties):
    tensors = weights(seed=1, ties=ties)
    total = sum(t.numel() for t in tensors.values())
    masks = magnitude_masks(tensors, sparsity, "global")
    assert list(masks) == list(tensors) and all(masks[n].shape == t.shape for n, t in tensors.items())
    assert sum(int((~m).sum()) for m in masks.values()) == round(sparsity * total)
    check_lowest_dropped(tensors, masks)


def test_global_scope_prunes_small_tensors_more():
    tensors = {"large": torch.linspace(1, 2, 30), "small": -torch.linspace(0.01, 0.1, 20).reshape(4, 5)}
    masks = magnitude_masks(tensors, 0.5, "global")
    assert not masks["small"].any() and int(masks["large"].sum()) == 25
    assert masks["large"][5:].all()


def test_ties_are_broken_by_position():
    w = torch.tensor([[2.0, 1.0, -1.0, 1.0], [1.0, 3.0, -1.0, 1.0]])
    assert magnitude_masks({"w": w}, 0.5)["w"].tolist() == [[True, False, False, False], [False, True, True, True]]
    masks = magnitude_masks({"a": torch.ones(3), "b": torch.ones(2)}, 0.6, "global")
    assert masks["a"].tolist() == [False, False, False] and masks["b"].tolist() == [True, True]
    again = magnitude_masks(weights(ties=True), 0.37, "global")
    assert all(torch.equal(m, again[n]) for n, m in magnitude_masks(weights(ties=True), 0.37, "global").items())


def test_zero_sparsity_keeps_everything_and_bad_arguments_are_refused():
    tensors = weights()
    for scope in ("tensor", "global"):
        assert all(m.all() for m in magnitude_masks(tensors, 0.0, scope).values())
    assert magnitude_masks({}, 0.5, "global") == {}
    with pytest.raises(ValueError):
        magnitude_masks(tensors, 1.5)
    with pytest.raises(ValueError):
        magnitude_masks(tensors, 0.5, "layer")


@pytest.mark.parametrize("storage", ["int4-row", "ternary", "fp8-row"])
def test_pruned_zeros_survive_quantization(storage):
    w = weights()["t4"]
    pruned = apply_masks({"w": w}, magnitude_masks({"w": w}, 0.3))["w"]
    grid = STORAGES[storage].grid(pruned, PackPolicy())
    assert (grid.snap(pruned, slice(None))[pruned == 0] == 0).all()


# ---------------------------------------------------------------------------------------------------
# Low-rank correction


@pytest.mark.parametrize("storage", ["int4-row", "ternary"])
def test_lowrank_correction_lowers_the_error_more_as_the_rank_grows(storage):
    g = torch.Generator().manual_seed(0)
    w = 0.05 * torch.randn(64, 96, generator=g)
    x = torch.randn(512, 96, generator=g)
    q = STORAGES[storage].grid(w, PackPolicy()).snap(w, slice(None))
    error = w - q
    weight_errors, output_errors = [float(error.norm())], [float((x @ error.T).norm())]
    for rank in (1, 2, 4, 8, 16, 32):
        a, b = lowrank_correction(error, rank)
        assert a.dtype == b.dtype == torch.float16 and a.shape == (64, rank) and b.shape == (rank, 96)
        left = w - (q + a.float() @ b.float())
        weight_errors.append(float(left.norm()))
        output_errors.append(float((x @ left.T).norm()))
    assert all(later < earlier for earlier, later in zip(weight_errors, weight_errors[1:]))
    assert all(later < earlier for earlier, later in zip(output_errors, output_errors[1:]))


def test_lowrank_rank_is_capped_and_full_rank_restores_the_weight():
    g = torch.Generator().manual_seed(1)
    error = 1e-3 * torch.randn(20, 12, generator=g)
    a, b = lowrank_correction(error, 1000)
    assert a.shape == (20, 12) and b.shape == (12, 12)
    assert (a.float() @ b.float() - error).norm() < 1e-2 * error.norm()  # exact up to fp16 rounding
    a, b = lowrank_correction(error, 0)
    assert a.shape == (20, 0) and b.shape == (0, 12)
    with pytest.raises(ValueError):
        lowrank_correction(error[0], 2)
