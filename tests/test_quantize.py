import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmgolf import quantize as Q
from lmgolf.config import PackPolicy

ODD_SHAPES = [(1, 1), (3, 7), (17, 129), (64, 65), (5, 1), (1, 33), (2, 3, 5)]
QUICK = settings(max_examples=25, deadline=None)


@st.composite
def weights(draw, shapes=st.sampled_from(ODD_SHAPES)) -> torch.Tensor:
    """Rows of very different magnitudes, sometimes with outliers and all-zero rows."""
    shape = draw(shapes)
    g = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    w = torch.randn(shape, generator=g) * 10 ** (torch.rand(shape[0], *[1] * (len(shape) - 1), generator=g) * 5 - 4)
    if draw(st.booleans()):
        w.view(-1)[torch.randint(0, w.numel(), (max(1, w.numel() // 50),), generator=g)] *= 30
    if draw(st.booleans()) and shape[0] > 1:
        w[0] = 0
    return w


def policy(**fields) -> PackPolicy:
    return PackPolicy(**{"bit_pack": "on", **fields})


# ---------------------------------------------------------------------------------------------------
# Integer rows


@QUICK
@given(w=weights(), bits=st.integers(2, 8), rule=st.sampled_from(Q.CLIP_RULES), quantile=st.sampled_from([0.9, 1.0]))
def test_int_rows_round_trip_exactly_and_stay_within_half_a_step(w, bits, rule, quantile):
    rows = Q.as_rows(w)
    clip = Q.row_clip(rows, bits, rule, quantile=quantile, k=2.5)
    q = Q.quantize_rows(rows, bits, clip)
    restored = Q.dequantize_rows(q.codes, q.scales)
    unpacked = Q.unpack_bits(Q.pack_bits(q.codes, bits), bits, rows.numel()).reshape(rows.shape)

    assert q.codes.abs().max() <= Q.qmax(bits) and q.scales.dtype == torch.float16
    assert Q.pack_bits(q.codes, bits).numel() == math.ceil(rows.numel() * bits / 8)
    assert torch.equal(unpacked, q.codes)
    assert torch.equal(Q.dequantize_rows(unpacked, q.scales), restored)
    unclipped = rows.abs() <= clip[:, None]
    step = q.scales.float()[:, None].expand_as(rows)
    assert ((restored - rows).abs() <= step * (0.5 + 1e-5))[unclipped].all()
    assert q.clipped == int((~unclipped).sum()) / rows.numel()


@QUICK
@given(w=weights(), bits=st.integers(2, 8), rule=st.sampled_from(Q.CLIP_RULES), bit_pack=st.booleans())
def test_int_storages_restore_the_quantizers_own_weights(w, bits, rule, bit_pack):
    pol = policy(clip=rule, bit_pack=bit_pack)
    blobs, meta = Q.STORAGES[f"int{bits}-row"].quantize(w, pol)
    rows = Q.as_rows(w)
    own = Q.quantize_rows(rows, bits, Q.row_clip(rows, bits, rule, pol.clip_quantile, pol.clip_k))
    restored = Q.STORAGES[f"int{bits}-row"].dequantize(blobs, meta, list(w.shape))
    assert torch.equal(restored, Q.dequantize_rows(own.codes, own.scales))
    assert meta["clip"] == rule and meta["clipped"] == own.clipped
    assert blobs["q"].dtype == (torch.uint8 if bit_pack and bits < 8 else torch.int8)


def test_clipped_share_counts_the_entries_beyond_the_clip():
    w = torch.ones(4, 100)
    w[0, :3] = 50.0
    w[2, 10] = -7.0
    w[3, 99] = 1.5
    q = Q.quantize_rows(w, 6, clip=torch.full((4,), 1.0))
    assert q.clipped == 5 / 400
    restored = Q.dequantize_rows(q.codes, q.scales)
    assert torch.allclose(restored[0, :3], torch.ones(3), rtol=0.02) and restored[2, 10] < 0


def test_int8_row_keeps_the_version_1_bytes():
    torch.manual_seed(0)
    w = torch.randn(33, 70) * torch.logspace(-4, 1, 33)[:, None]
    blobs, _ = Q.STORAGES["int8-row"].quantize(w, policy(clip_quantile=0.999))
    clip = Q.row_quantile(w.abs(), 0.999)[:, None]
    scale = (clip / 127).half()
    scale = torch.where(scale.float() < clip / 127, torch.nextafter(scale, torch.tensor(float("inf")).half()), scale)
    assert torch.equal(blobs["scale"], scale[:, 0])
    assert torch.equal(blobs["q"], torch.round(w.clamp(-clip, clip) / scale.float()).clamp(-127, 127).to(torch.int8))


def test_int6_packs_four_codes_in_three_bytes():
    codes = torch.tensor([-31, 0, 31, 5], dtype=torch.int8)  # offsets 0, 31, 62, 36
    packed = Q.pack_bits(codes, 6)
    bits = 0 | 31 << 6 | 62 << 12 | 36 << 18
    assert packed.tolist() == list(bits.to_bytes(3, "little"))
    with pytest.raises(ValueError):
        Q.unpack_bits(packed[:2], 6, 4)


def test_std_clip_is_k_standard_deviations_capped_at_the_max():
    w = torch.tensor([[1.0, -1.0, 1.0, -1.0], [0.0, 0.0, 0.0, 8.0]])
    assert torch.allclose(Q.std_clip(w, 0.5), torch.tensor([0.5, 0.5 * math.sqrt(12)]))
    assert torch.equal(Q.std_clip(w, 10.0), torch.tensor([1.0, 8.0]))


@settings(max_examples=15, deadline=None)
@given(w=weights(st.sampled_from([(3, 7), (17, 129), (64, 65)])), bits=st.integers(2, 8))
def test_search_clip_does_no_worse_than_the_max_or_the_std_rule(w, bits):
    def error(clip):
        q = Q.quantize_rows(w, bits, clip)
        return (Q.dequantize_rows(q.codes, q.scales) - w).square().sum(dim=1)
    searched = error(Q.search_clip(w, bits))
    assert (searched <= error(w.abs().amax(dim=1))).all()
    assert searched.sum() <= error(Q.std_clip(w, 3.0)).sum() * 1.05


# ---------------------------------------------------------------------------------------------------
# Ternary


@QUICK
@given(w=weights(), group=st.sampled_from([1, 4, 7, 64]))
def test_ternary_round_trips_with_absmean_scales(w, group):
    rows = Q.as_rows(w)
    t = Q.quantize_ternary(rows, group)
    assert set(t.codes.unique().tolist()) <= {-1, 0, 1}
    groups = math.ceil(rows.shape[1] / group)
    assert t.scales.shape == (rows.shape[0], groups) and t.scales.dtype == torch.float16
    absmean = torch.stack([rows[:, i * group:(i + 1) * group].abs().mean(dim=1) for i in range(groups)], dim=1)
    assert torch.equal(t.scales, absmean.half())
    unpacked = Q.unpack_trits(Q.pack_trits(t.codes), rows.numel()).reshape(rows.shape)
    assert torch.equal(unpacked, t.codes)
    restored = Q.dequantize_ternary(t.codes, t.scales, group)
    assert torch.equal(Q.dequantize_ternary(unpacked, t.scales, group), restored)
    blobs, meta = Q.STORAGES["ternary"].quantize(w, policy(ternary_group=group))
    assert torch.equal(Q.STORAGES["ternary"].dequantize(blobs, meta, list(w.shape)), restored)
    assert blobs["trits"].numel() == math.ceil(rows.numel() / 5)


@given(codes=st.lists(st.integers(-1, 1), min_size=1, max_size=60))
def test_trits_round_trip_at_any_length(codes):
    t = torch.tensor(codes, dtype=torch.int8)
    packed = Q.pack_trits(t)
    assert packed.dtype == torch.uint8 and packed.numel() == math.ceil(len(codes) / 5) and packed.max() < 243
    assert torch.equal(Q.unpack_trits(packed, len(codes)), t)


def test_ternary_codes_follow_the_rounded_ratio():
    w = torch.tensor([[0.1, -0.1, 0.5, -0.9, 2.0, 0.0]])  # absmean 0.6
    t = Q.quantize_ternary(w, group=6)
    assert t.codes.tolist() == [[0, 0, 1, -1, 1, 0]]
    assert t.scales.item() == pytest.approx(0.6, rel=1e-3)


# ---------------------------------------------------------------------------------------------------
# Floats and the byte shuffle


@QUICK
@given(w=weights())
def test_fp8_rows_round_trip_within_e4m3_precision(w):
    rows = Q.as_rows(w)
    codes, scales = Q.quantize_fp8_rows(rows)
    restored = Q.dequantize_fp8_rows(codes, scales)
    assert codes.dtype == torch.uint8 and not torch.isnan(restored).any()
    blobs, meta = Q.STORAGES["fp8-row"].quantize(w, policy())
    assert torch.equal(Q.STORAGES["fp8-row"].dequantize(blobs, meta, list(w.shape)), restored)
    assert torch.equal(Q.e4m3_codes_by_table(rows / scales.float()[:, None]), codes)
    step = scales.float()[:, None] * 2.0 ** -9  # half the smallest spacing (subnormals) of the scaled values
    assert ((restored - rows).abs() <= torch.maximum(rows.abs() / 16, step) * (1 + 1e-6)).all()


def test_e4m3_table_matches_torch_on_ties_and_edges():
    ladder = Q.E4M3_VALUES[:0x7F]
    mids = (ladder[1:] + ladder[:-1]) / 2
    x = torch.cat([ladder, mids, -mids, torch.tensor([0.0, -0.0, 1e-9, -1e-9, 447.9, -448.0]), torch.randn(1000) * 50])
    x = x.clamp(-448, 448)
    assert torch.equal(Q.e4m3_codes_by_table(x), x.to(torch.float8_e4m3fn).view(torch.uint8))
    assert Q.E4M3_VALUES[0x7E] == 448 and Q.E4M3_VALUES[1] == 2.0 ** -9


def test_float_storages():
    w = torch.randn(5, 9)
    for name, dtype in (("fp16", torch.float16), ("bf16", torch.bfloat16), ("fp32", torch.float32)):
        blobs, meta = Q.STORAGES[name].quantize(w, policy())
        assert blobs["values"].dtype == dtype and not Q.STORAGES[name].quantizer
        assert torch.equal(Q.STORAGES[name].dequantize(blobs, meta, [5, 9]), w.to(dtype).float())
    with pytest.raises(ValueError, match="fp32"):
        Q.STORAGES["fp16"].quantize(w * 1e6, policy())


@given(data=st.binary(max_size=200), width=st.integers(1, 9))
def test_byte_shuffle_inverts(data, width):
    shuffled = Q.shuffle_bytes(data, width)
    assert len(shuffled) == len(data) and Q.unshuffle_bytes(shuffled, width) == data


def test_byte_shuffle_groups_the_kth_bytes():
    values = np.array([0x0102, 0x0304, 0x0506], dtype="<u2").tobytes()
    assert Q.shuffle_bytes(values, 2) == bytes([0x02, 0x04, 0x06, 0x01, 0x03, 0x05])
    assert Q.shuffle_bytes(b"abcdefg", 3) == b"adbecfg"


def test_bit_pack_auto_packs_from_four_bits_down():
    assert [PackPolicy().packs_bits(b) for b in (2, 3, 4, 5, 6, 7)] == [True, True, True, False, False, False]
    assert PackPolicy(bit_pack="on").packs_bits(6) and not PackPolicy(bit_pack="off").packs_bits(3)
