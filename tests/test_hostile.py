"""Hostile inputs: artifacts from strangers, absurd configs and arguments are refused quickly, with
bounded memory and a one-line message, never a traceback or an allocator error."""

import json
import lzma
import struct
import time
import tracemalloc
import zlib

import pytest
import torch

import lmgolf.codecs as codec_table
from lmgolf import api
from lmgolf.cli import main
from lmgolf.config import Config, ModelConfig, load_config
from lmgolf.data.tokenizers import ByteTokenizer
from lmgolf.errors import LmgolfError
from lmgolf.model.gpt import GPT
from lmgolf.packing import artifact
from lmgolf.packing.artifact import load_artifact, read_header
from lmgolf.packing.writer import pack

TINY = ["model.n_layer=1", "model.d_model=32", "model.n_head=2", "model.context=32", "train.batch_tokens=128",
        "train.micro_batch=4", "train.device=cpu", "train.compile=off", "train.eval_tokens=256"]


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    cfg = Config(model=ModelConfig(vocab_size=257, n_layer=2, d_model=32, n_head=2, context=32))
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("hostile") / "good.lmg"
    pack(GPT(cfg.model).eval(), cfg, ByteTokenizer(), path, cfg.pack, allow_over_budget=True)
    header, blobs = artifact.split_payload(artifact.read_payload(path)[0], "x")
    return path, header, bytes(blobs)


def _stream_compress(codec: str, parts):
    """Compresses an iterable of byte strings without holding them all (so the test itself stays small)."""
    if codec == "zlib":
        c = zlib.compressobj(9)
        return b"".join(c.compress(p) for p in parts) + c.flush()
    if codec == "lzma":
        c = lzma.LZMACompressor(preset=6)
        return b"".join(c.compress(p) for p in parts) + c.flush()
    if codec == "zstd":
        c = codec_table.zstandard.ZstdCompressor(level=3).compressobj()
        return b"".join(c.compress(p) for p in parts) + c.flush()
    c = codec_table.brotli.Compressor(quality=5)
    return b"".join(c.process(p) for p in parts) + c.finish()


def _write(path, codec: str, parts, digest: bytes = bytes(32)):
    preamble = artifact.MAGIC + bytes([artifact.FORMAT_VERSION, codec_table.CODECS[codec].id]) + digest
    path.write_bytes(preamble + _stream_compress(codec, parts))
    return path


def _refused(fn, *args, match: str, seconds: float = 1.0, megabytes: float = 50):
    tracemalloc.start()
    start = time.perf_counter()
    try:
        with pytest.raises(LmgolfError, match=match) as err:
            fn(*args)
        elapsed, peak = time.perf_counter() - start, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert "\n" not in str(err.value)
    assert elapsed < seconds, elapsed
    assert peak < megabytes * 2**20, peak / 2**20
    return str(err.value)


def _zeros(total: int):
    chunk = bytes(1 << 20)
    for _ in range(total >> 20):
        yield chunk


@pytest.mark.parametrize("codec", list(codec_table.CODECS))
def test_decompression_bomb_behind_a_valid_header_is_refused_with_bounded_memory(packed, tmp_path, codec):
    path, header, blobs = packed
    head = json.dumps(header).encode()
    parts = [struct.pack("<I", len(head)) + head, blobs, *_zeros(256 << 20)]  # 256 MB of zeros after the blobs
    bomb = _write(tmp_path / "bomb.lmg", codec, parts)
    assert bomb.stat().st_size < 2_000_000
    _refused(load_artifact, bomb, match="bomb.lmg: corrupt payload, more data follows the blobs", seconds=10)


@pytest.mark.parametrize("codec", list(codec_table.CODECS))
def test_a_huge_header_length_is_refused_before_it_is_inflated(tmp_path, codec):
    bomb = _write(tmp_path / "bomb.lmg", codec, [struct.pack("<I", 2**32 - 1), *_zeros(64 << 20)])
    _refused(load_artifact, bomb, match=r"bomb.lmg: header length 4,294,967,295 bytes, over the limit")


def test_blob_offsets_beyond_the_model_are_refused_before_they_are_inflated(packed, tmp_path):
    _, header, blobs = packed
    forged = json.loads(json.dumps(header))
    forged["tensors"][0]["blobs"][0]["offset"] = 1 << 34
    head = json.dumps(forged).encode()
    bomb = _write(tmp_path / "bomb.lmg", "zlib", [struct.pack("<I", len(head)) + head, blobs, *_zeros(64 << 20)])
    _refused(load_artifact, bomb, match=r"bomb.lmg: the header lists 17,179,[\d,]+ bytes of blobs for [\d,]+ parameters")


def _with_config(tmp_path, header, blobs, **model):
    forged = json.loads(json.dumps(header))
    forged["config"]["model"].update(model)
    path = tmp_path / "forged.lmg"
    path.write_bytes(artifact.container("zlib", artifact.encode_payload(forged, blobs)))
    return path


@pytest.mark.parametrize("model, match", [
    ({"d_model": 65536}, r"d_model=65536: at least [\d,]+ parameters, [\d,.]+ GiB as float32, over the limit"),
    ({"vocab_size": 2**31}, r"vocab_size=2147483648, .* GiB as float32, over the limit"),
    ({"n_layer": 200000, "d_model": 512}, r"n_layer=200000, d_model=512: .* over the limit"),
    ({"n_layer": 200000, "d_model": 2, "n_head": 1}, r"model.n_layer: 200000 blocks, over the limit of 1024"),
])
def test_absurd_header_configs_are_refused_quickly_without_allocating(packed, tmp_path, model, match):
    _, header, blobs = packed
    path = _with_config(tmp_path, header, blobs, **model)
    message = _refused(load_artifact, path, match=match, megabytes=20)
    assert message.startswith(f"{path}: header field 'config'")
    _refused(read_header, path, match=match, megabytes=20)


def test_stored_shapes_that_disagree_with_the_config_are_refused(packed, tmp_path):
    _, header, blobs = packed
    path = _with_config(tmp_path, header, blobs, d_model=64)
    _refused(load_artifact, path, match=r"forged.lmg: tensor tok_emb.weight has shape \[257, 32\], its config gives \[257, 64\]")
    path = _with_config(tmp_path, header, blobs, n_layer=3)
    _refused(load_artifact, path, match=r"forged.lmg: the tensors do not match the config's model \(blocks.2")


def test_the_good_artifact_still_loads(packed):
    path, _, _ = packed
    model, cfg, _, _ = load_artifact(path)
    assert cfg.model.n_layer == 2 and not model.training


@pytest.mark.parametrize("override, match", [
    ("train.lr=NaN", "train.lr: must be a finite number, got nan"),
    ("train.matrix_lr=-1", "config field train.matrix_lr: a learning rate must be > 0, got -1.0"),
    ("train.lr=0", "config field train.lr: a learning rate must be > 0"),
    ("train.beta2=1", r"config field train.beta2: must lie in \[0, 1\)"),
    ("train.weight_decay=-0.1", "config field train.weight_decay: must be >= 0"),
    ("model.rope_base=Infinity", "model.rope_base: must be a finite number, got inf"),
    ("pack.clip_k=NaN", "pack.clip_k: must be a finite number"),
])
def test_config_values_are_validated_where_read(override, match):
    with pytest.raises(LmgolfError, match=match):
        load_config("cpu-demo", [override])


def test_non_finite_values_built_in_python_are_refused():
    with pytest.raises(LmgolfError, match="config field model.mlp_mult: must be a finite number, got nan"):
        ModelConfig(mlp_mult=float("nan")).validate()


def test_count_on_a_huge_model_answers_at_once(capsys):
    start = time.perf_counter()
    assert main(["count", "--preset", "cpu-demo", "model.n_layer=100000"]) == 2
    assert time.perf_counter() - start < 2
    err = capsys.readouterr().err
    assert "n_layer=100000, d_model=256: at least 65," in err and "GiB as float32, over the limit" in err
    assert "Traceback" not in err and err.count("\n") == 1


def test_train_refuses_a_model_that_cannot_fit(byte_data, tmp_path, monkeypatch):
    import lmgolf.training.memory as memory
    monkeypatch.setattr(memory, "available_bytes", lambda device: 2**30)
    from lmgolf.training.trainer import train
    cfg = load_config("cpu-demo", TINY + ["train.max_steps=1", "model.d_model=4096", "model.n_head=32", "model.n_layer=2"])
    start = time.perf_counter()
    with pytest.raises(LmgolfError, match=r"training [\d,]+ parameters needs at least [\d.]+ GiB \(weights, gradients "
                                          r"and optimizer state\), cpu has 1.0 GiB free"):
        train(cfg, byte_data, tmp_path / "big", progress=False)
    assert time.perf_counter() - start < 5
    assert not (tmp_path / "big" / "checkpoint").exists()


def test_generate_caps_max_new_tokens_and_refuses_infinite_temperature(packed, capsys):
    path, _, _ = packed
    assert main(["generate", str(path), "--max-new-tokens", "100000"]) == 2
    assert "max_new_tokens: must lie in [0, 16384], got 100000" in capsys.readouterr().err
    assert main(["generate", str(path), "--temperature", "inf"]) == 2
    err = capsys.readouterr().err
    assert "temperature: must be finite and >= 0 (0 means greedy), got inf" in err and "Traceback" not in err


def test_generate_streams_the_same_text(packed, capsys):
    path, _, _ = packed
    loaded = api.load(path)
    whole = api.generate(loaded, "Hi", 300, seed=3)
    pieces = list(api.generate(loaded, "Hi", 300, seed=3, stream=True))
    assert len(pieces) > 2 and "".join(pieces) == whole
    assert main(["generate", str(path), "--prompt", "Hi", "--max-new-tokens", "300", "--seed", "3"]) == 0
    assert capsys.readouterr().out == whole + "\n"


def test_divergence_without_a_checkpoint_names_none(byte_data, tmp_path):
    import lmgolf.training.trainer as train_module
    holder, original = {}, train_module.GPT

    def capture(cfg):
        holder["model"] = original(cfg)
        return holder["model"]

    def poison(step):
        with torch.no_grad():
            holder["model"].tok_emb.weight.fill_(float("nan"))

    train_module.GPT = capture
    try:
        with pytest.raises(LmgolfError, match="diverged") as err:
            train_module.train(load_config("cpu-demo", TINY + ["train.max_steps=5"]), byte_data, tmp_path / "r",
                               progress=False, on_step=poison)
    finally:
        train_module.GPT = original
    assert "no checkpoint was written yet" in str(err.value) and "intact" not in str(err.value)
