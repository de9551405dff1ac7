import dataclasses
import hashlib
import sys
import time
import types
from pathlib import Path

import pytest
import torch

from lmgolf.packing import artifact
import lmgolf.codecs as codec_table
from lmgolf import quantize as Q
from lmgolf.packing import writer as packing
from lmgolf.config import PackPolicy
from lmgolf.packing.artifact import load_artifact
from lmgolf.packing.policy import storage_for
from lmgolf.packing.writer import code_bytes, dequantized_state_dict, pack
from lmgolf.config import Config, ModelConfig, load_preset
from lmgolf.model.count import count_module
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT

SMALL = PackPolicy(min_quant_numel=1024)  # small enough that the tiny model's matrices get int8


class _ByteStandIn:
    """Used only while lmgolf.data.tokenizers does not exist yet."""
    kind, vocab_size, bos_id, lossy = "byte", 257, 256, False

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: list[int]) -> str:
        return bytes(i for i in ids if i < 256).decode("utf-8", errors="replace")

    def files(self) -> dict[str, bytes]:
        return {"tokenizer.json": b'{"kind": "byte"}'}

    @property
    def fingerprint(self) -> str:
        return hashlib.sha256(self.files()["tokenizer.json"]).hexdigest()


@pytest.fixture
def tokenizer(monkeypatch):
    try:
        from lmgolf.data.tokenizers import train_tokenizer
    except ImportError:
        fake = types.ModuleType("lmgolf.data.tokenizers")
        fake.tokenizer_from_files = lambda files, source: _ByteStandIn()
        monkeypatch.setitem(sys.modules, "lmgolf.data.tokenizers", fake)
        return _ByteStandIn()
    return train_tokenizer("byte", [])


def tiny(vocab: int, **overrides) -> tuple[GPT, Config]:
    fields = dict(vocab_size=vocab, n_layer=2, d_model=64, n_head=4, n_kv_head=2, context=32, mlp="relu2",
                  tie_embeddings=False, init_std=0.05)
    cfg = Config(model=ModelConfig(**{**fields, **overrides}))
    torch.manual_seed(0)
    return GPT(cfg.model).eval(), cfg


@pytest.fixture
def packed(tmp_path, tokenizer):
    model, cfg = tiny(tokenizer.vocab_size)
    path = tmp_path / "m.lmg"
    report = pack(model, cfg, tokenizer, path, SMALL)
    return model, cfg, path, report


def test_round_trip_gives_the_dequantized_weights_and_their_logits(packed, tokenizer):
    model, cfg, path, _ = packed
    loaded, loaded_cfg, loaded_tok, info = load_artifact(path)
    expected = dequantized_state_dict(model, SMALL)
    got = loaded.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
    assert loaded_cfg.to_dict() == cfg.to_dict() and not loaded.training
    assert loaded_tok.fingerprint == tokenizer.fingerprint
    assert {"int8-row", "fp16"} <= set(info["storages"].values()) and info["codec"] == "zlib"

    reference = GPT(cfg.model).eval()
    reference.load_state_dict(expected)
    idx = torch.randint(0, cfg.model.vocab_size, (2, 16))
    with torch.no_grad():
        assert torch.equal(loaded(idx), reference(idx))
        drift = (loaded(idx) - model(idx)).abs().max()
    assert 0 < drift < 0.05  # quantized, but close


def test_policy_picks_storages():
    model, _ = tiny(100, tie_embeddings=True, output_scales=True)
    policy = PackPolicy(min_quant_numel=4096, keep_fp16=("tok_emb.weight",), keep_fp32=("*.attn_scale",))
    storages = {e["name"]: e["storage"] for e in artifact.layout(packing.quantize_model(model, policy))[0]}
    assert storages["tok_emb.weight"] == "fp16"
    assert storages["blocks.0.attn_scale"] == "fp32"
    assert storages["blocks.0.mlp.up.weight"] == "int8-row"  # 256 x 64
    assert storages["blocks.0.attn.k.weight"] == "fp16"      # 32 x 64 < 4096
    assert storages["blocks.0.attn_norm.weight"] == "fp16"


def test_row_quantile_matches_torch_quantile():
    w = torch.randn(7, 1000).abs()
    for q in (0.5, 0.9, 0.9999984, 1.0):
        assert torch.allclose(Q.row_quantile(w, q), torch.quantile(w, q, dim=1), rtol=1e-6, atol=0)


def test_int8_rows_are_within_half_a_step_where_unclipped():
    torch.manual_seed(1)
    w = torch.randn(64, 4096) * torch.logspace(-4, 1, 64)[:, None]
    w[3, 17] = 100.0  # an outlier that the quantile clips
    w[5] = 0.0        # an all-zero row
    policy = PackPolicy(clip_quantile=0.999)
    blobs, _ = artifact.STORAGES["int8-row"].quantize(w, policy)
    restored = artifact.STORAGES["int8-row"].dequantize(blobs, {}, list(w.shape))
    step = blobs["scale"].float()[:, None]
    clip = Q.row_quantile(w.abs(), policy.clip_quantile)[:, None]
    unclipped = w.abs() <= clip
    assert blobs["q"].dtype == torch.int8 and blobs["scale"].dtype == torch.float16
    assert ((restored - w).abs() <= step / 2 * (1 + 1e-6))[unclipped].all()
    assert not unclipped[3, 17] and restored[3, 17] <= clip[3] * (1 + 1e-3)
    assert torch.equal(restored[5], torch.zeros(4096))


def test_every_codec_stores_the_same_payload(tmp_path, tokenizer):
    """Codecs are lossless: one payload, different sizes, the same score to the last bit."""
    from lmgolf.eval.evaluate import evaluate
    model, cfg = tiny(tokenizer.vocab_size)
    tokens = torch.randint(0, tokenizer.vocab_size, (200,)).numpy()
    nbytes = torch.ones(200, dtype=torch.int64).numpy()
    sizes, payloads, scores = {}, {}, {}
    for codec in codec_table.CODECS:
        path = tmp_path / f"{codec}.lmg"
        report = pack(model, cfg, tokenizer, path, PackPolicy(codec=codec, min_quant_numel=1024, default_storage="int5-row"))
        sizes[codec] = report.artifact_bytes == path.stat().st_size and report.artifact_bytes
        payloads[codec] = artifact.read_payload(path)[0]
        loaded, _, _, info = load_artifact(path)
        assert info["codec"] == codec
        scores[codec] = evaluate(loaded, tokens, nbytes, cfg.model.context, progress=False).bpb
    assert len(set(payloads.values())) == 1 and len(set(scores.values())) == 1
    assert len(set(sizes.values())) == len(sizes)


def _corrupt(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


def test_corrupt_artifacts_are_refused_naming_the_file(packed, tmp_path):
    _, _, path, _ = packed
    good = path.read_bytes()
    bad = tmp_path / "bad.lmg"
    variants = {
        "bad magic": b"NOTLMG\x00" + good[7:],
        "future version": good[:7] + b"\x09" + good[8:],
        "unknown codec id": good[:8] + b"\x63" + good[9:],
        "wrong codec id": good[:8] + bytes([codec_table.CODECS["lzma"].id]) + good[9:],
        "truncated": good[:-20],
        "too short": good[:12],
        "empty": b"",
    }
    for pos in (20, artifact.PREAMBLE, artifact.PREAMBLE + 5, len(good) // 2, len(good) - 1):
        variants[f"flipped byte {pos}"] = good[:pos] + bytes([good[pos] ^ 0xFF]) + good[pos + 1:]
    for what, data in variants.items():
        with pytest.raises(LmgolfError, match="bad.lmg") as err:
            load_artifact(_corrupt(bad, data))
        assert "\n" not in str(err.value), what
    with pytest.raises(LmgolfError, match="missing.lmg"):
        load_artifact(tmp_path / "missing.lmg")


def test_payload_damage_behind_a_valid_checksum_is_refused(packed, tmp_path):
    _, _, path, _ = packed
    payload, _ = artifact.read_payload(path)
    header, blobs = artifact.split_payload(payload, "x")
    header["tensors"][0]["blobs"][0]["length"] += 1
    forged = tmp_path / "forged.lmg"
    forged.write_bytes(artifact.container("zlib", artifact.encode_payload(header, bytes(blobs))))
    with pytest.raises(LmgolfError, match="forged.lmg: tensor .*wrong length"):
        load_artifact(forged)
    header["tensors"][0]["blobs"][0]["length"] -= 1
    header["tensors"][0]["storage"] = "int3-magic"
    forged.write_bytes(artifact.container("zlib", artifact.encode_payload(header, bytes(blobs))))
    with pytest.raises(LmgolfError, match="unknown storage 'int3-magic'"):
        load_artifact(forged)


def test_over_budget_is_refused_unless_allowed(tmp_path, tokenizer):
    model, cfg = tiny(tokenizer.vocab_size)
    path = tmp_path / "big.lmg"
    with pytest.raises(LmgolfError, match="big.lmg: not written.*OVER by"):
        pack(model, cfg, tokenizer, path, budget=1000)
    assert list(tmp_path.iterdir()) == []
    report = pack(model, cfg, tokenizer, path, budget=1000, allow_over_budget=True)
    assert path.is_file() and not report.fits()
    assert f"OVER by {report.total_bytes - 1000:,}" in report.format()


def test_report_table_adds_up(packed):
    model, _, path, report = packed
    assert sum(g["params"] for g in report.groups) == count_module(model).params
    assert report.total_bytes == report.artifact_bytes + report.code_bytes == path.stat().st_size + code_bytes()
    assert report.fits() and report.format().endswith("(fits)")
    assert [g["group"] for g in report.groups][:1] == ["embedding"]
    assert "int8-row" in {g["storage"] for g in report.groups}


def test_pack_refuses_bad_inputs(tmp_path, tokenizer):
    model, cfg = tiny(tokenizer.vocab_size)
    with pytest.raises(LmgolfError, match="codec"):
        pack(model, cfg, tokenizer, tmp_path / "a.lmg", PackPolicy(codec="gzip"))
    with pytest.raises(LmgolfError, match="clip_quantile"):
        pack(model, cfg, tokenizer, tmp_path / "a.lmg", PackPolicy(clip_quantile=0))
    _, other = tiny(tokenizer.vocab_size, n_layer=3)
    with pytest.raises(LmgolfError, match="config"):
        pack(model, other, tokenizer, tmp_path / "a.lmg")
    small, small_cfg = tiny(50)
    with pytest.raises(LmgolfError, match="tokenizer"):
        pack(small, small_cfg, tokenizer, tmp_path / "a.lmg")
    with torch.no_grad():
        model.blocks[0].attn.q.weight[0, 0] = float("nan")
    with pytest.raises(LmgolfError, match="blocks.0.attn.q.weight: contains NaN"):
        pack(model, cfg, tokenizer, tmp_path / "a.lmg")
    assert list(tmp_path.iterdir()) == []


def test_pg_baseline_random_init_fits_the_budget(tmp_path, tokenizer):
    cfg = load_preset("pg-baseline")
    torch.manual_seed(0)
    model = GPT(cfg.model)
    tok = tokenizer if tokenizer.vocab_size <= cfg.model.vocab_size else _ByteStandIn()
    start = time.perf_counter()
    report = pack(model, cfg, tok, tmp_path / "pg.lmg", PackPolicy(codec="zlib"))
    seconds = time.perf_counter() - start
    print(f"\npg-baseline, random init, packed in {seconds:.1f} s\n{report.format()}")
    assert sum(g["params"] for g in report.groups) == count_module(model).params
    assert report.total_bytes < 17_500_000


# ---------------------------------------------------------------------------------------------------
# Quantizer policies

MIXED = {"mlp": "int5-row", "attention": "int6-row", "embedding": "int8-row"}
POLICIES = {
    "int6 everywhere": dict(default_storage="int6-row"),
    "int5 mlp, int6 attention, int8 embedding": dict(group_storage=MIXED, clip="std", clip_k=3.0),
    "ternary mlp": dict(group_storage={"mlp": "ternary"}, ternary_group=32),
    "fp8": dict(default_storage="fp8-row", group_storage={"norms": "bf16"}),
    "int4 searched, unpacked": dict(default_storage="int4-row", clip="search", bit_pack=False),
}


@pytest.mark.parametrize("shuffle", [False, True], ids=["plain", "shuffled"])
@pytest.mark.parametrize("name", POLICIES)
def test_policies_round_trip_through_the_file(tmp_path, tokenizer, name, shuffle):
    model, cfg = tiny(tokenizer.vocab_size)
    policy = PackPolicy(min_quant_numel=1024, byte_shuffle=shuffle, **POLICIES[name])
    path = tmp_path / "m.lmg"
    pack(model, cfg, tokenizer, path, policy)
    loaded, _, _, _ = load_artifact(path)
    expected = dequantized_state_dict(model, policy)
    assert all(torch.equal(loaded.state_dict()[k], expected[k]) for k in expected)
    header = artifact.read_header(path)
    for entry in header["tensors"]:
        w = model.state_dict()[entry["name"]]
        assert entry["storage"] == storage_for(policy, entry["name"], w)
        assert any("shuffle" in b for b in entry["blobs"]) == shuffle  # every storage has a multi-byte blob
    idx = torch.randint(0, cfg.model.vocab_size, (2, 16))
    with torch.no_grad():
        relative_drift = (loaded(idx) - model(idx)).norm() / model(idx).norm()
    assert relative_drift < {"ternary mlp": 1.0, "int4 searched, unpacked": 0.5}.get(name, 0.2)  # random weights


def test_mixed_policy_picks_storages_by_group_and_pattern():
    model, _ = tiny(100)
    policy = PackPolicy(min_quant_numel=1024, group_storage={**MIXED, "norms": "fp32", "blocks.1.mlp.*": "int8-row"})
    storages = {e["name"]: e["storage"] for e in artifact.layout(packing.quantize_model(model, policy))[0]}
    assert storages["tok_emb.weight"] == "int8-row"
    assert storages["blocks.0.attn.q.weight"] == "int6-row"
    assert storages["blocks.0.mlp.up.weight"] == "int5-row"
    assert storages["blocks.1.mlp.up.weight"] == "int8-row"  # the pattern wins over the group
    assert storages["head.weight"] == "int8-row"             # the default
    assert storages["blocks.0.attn_norm.weight"] == "fp32"   # a float rule reaches small tensors too
    small = {e["name"]: e["storage"] for e in
             artifact.layout(packing.quantize_model(model, PackPolicy(default_storage="int6-row")))[0]}
    assert small["blocks.0.attn.q.weight"] == "fp16"        # under min_quant_numel: no quantizer


def test_header_records_the_quantizer_settings(tmp_path, tokenizer):
    model, cfg = tiny(tokenizer.vocab_size)
    policy = PackPolicy(min_quant_numel=1024, group_storage={"mlp": "int5-row", "attention": "ternary"},
                        clip="std", clip_k=3.0, byte_shuffle=True, bit_pack="on")
    pack(model, cfg, tokenizer, tmp_path / "m.lmg", policy)
    header = artifact.read_header(tmp_path / "m.lmg")
    entries = {e["name"]: e for e in header["tensors"]}
    mlp = entries["blocks.0.mlp.up.weight"]
    assert mlp["storage"] == "int5-row" and mlp["meta"]["clip"] == "std" and mlp["meta"]["k"] == 3.0
    assert mlp["meta"]["packed"] and 0 <= mlp["meta"]["clipped"] < 0.01
    assert [b["shuffle"] for b in mlp["blobs"]] == [5, 2]  # int5 repeats every 5 bytes; fp16 scales
    assert entries["blocks.0.attn.q.weight"]["meta"] == {"group": 64}
    assert header["policy"]["group_storage"] == {"mlp": "int5-row", "attention": "ternary"}


@pytest.mark.parametrize("policy", [PackPolicy(min_quant_numel=1024, default_storage="int6-row", byte_shuffle=True),
                                    PackPolicy(min_quant_numel=1024, group_storage={"mlp": "ternary"})],
                         ids=["int6 shuffled", "ternary"])
def test_every_codec_decompresses_to_the_same_payload(tmp_path, tokenizer, policy):
    model, cfg = tiny(tokenizer.vocab_size)
    payloads, weights = set(), []
    for codec in codec_table.CODECS:
        path = tmp_path / f"{codec}.lmg"
        pack(model, cfg, tokenizer, path, dataclasses.replace(policy, codec=codec))
        payloads.add(artifact.read_payload(path)[0])
        weights.append(load_artifact(path)[0].state_dict())
    assert len(payloads) == 1
    assert all(torch.equal(w[k], weights[0][k]) for w in weights for k in w)


def test_byte_shuffle_changes_the_payload_not_the_weights(tokenizer):
    model, _ = tiny(tokenizer.vocab_size)
    plain = PackPolicy(min_quant_numel=1024, default_storage="int6-row")
    shuffled = PackPolicy(min_quant_numel=1024, default_storage="int6-row", byte_shuffle=True)
    a, b = dequantized_state_dict(model, plain), dequantized_state_dict(model, shuffled)
    assert all(torch.equal(a[k], b[k]) for k in a)
    layout = lambda p: artifact.layout(packing.quantize_model(model, p), p.byte_shuffle)[1]  # noqa: E731
    assert layout(plain) != layout(shuffled) and len(layout(plain)) == len(layout(shuffled))


def test_bad_quantizer_policies_are_refused():
    cases = {"default_storage": dict(default_storage="int9-row"),
             "group_storage\\['mlp'\\]": dict(group_storage={"mlp": "int1-row"}),
             "group_storage: 'mlps' is neither a parameter group": dict(group_storage={"mlps": "int6-row"}),
             "clip: 'median'": dict(clip="median"),
             "clip_k": dict(clip_k=0.0),
             "ternary_group": dict(ternary_group=0)}
    for message, fields in cases.items():
        with pytest.raises(LmgolfError, match=f"config field pack.{message}"):
            PackPolicy(**fields).validate()


@pytest.mark.skipif(codec_table.brotli is not None, reason="brotli is installed")
def test_brotli_without_the_package_says_to_install_it(packed, tmp_path):
    with pytest.raises(LmgolfError, match="codec: the brotli codec needs the brotli package \\(pip install brotli\\)"):
        PackPolicy(codec="brotli").validate()
    _, _, path, _ = packed
    data = path.read_bytes()
    forged = tmp_path / "brotli.lmg"
    forged.write_bytes(data[:8] + bytes([codec_table.OPTIONAL_CODECS["brotli"]]) + data[9:])
    with pytest.raises(LmgolfError, match="brotli.lmg: the brotli codec needs the brotli package"):
        load_artifact(forged)


def test_damaged_quantizer_meta_is_refused(tmp_path, tokenizer):
    model, cfg = tiny(tokenizer.vocab_size)
    path = tmp_path / "m.lmg"
    pack(model, cfg, tokenizer, path, PackPolicy(min_quant_numel=1024, group_storage={"mlp": "ternary"}))
    payload, _ = artifact.read_payload(path)
    header, blobs = artifact.split_payload(payload, "x")
    entry = next(e for e in header["tensors"] if e["storage"] == "ternary")
    entry["meta"]["group"] = 3
    forged = tmp_path / "forged.lmg"
    forged.write_bytes(artifact.container("zlib", artifact.encode_payload(header, bytes(blobs))))
    with pytest.raises(LmgolfError, match="forged.lmg: tensor .*blobs do not fit storage ternary"):
        load_artifact(forged)
