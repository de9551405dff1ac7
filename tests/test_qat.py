"""QAT (lmgolf.training.qat): the forward pass equals the dequantized export's, eager and compiled; the switch
survives torch.compile; gradients are straight-through; training switches it on at the chosen point."""

import json

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import lmgolf.training.qat as qat_module
import lmgolf.training.trainer as train_module
from lmgolf.packing.artifact import load_artifact
from lmgolf.training.checkpoint import load_model, read_state
from lmgolf.config import ModelConfig, PackPolicy, TrainConfig, load_config
from lmgolf.data.folder import DataFolder
from lmgolf.eval.evaluate import evaluate
from lmgolf.model.gpt import GPT
from lmgolf.packing.policy import storages_for
from lmgolf.packing.writer import dequantized_state_dict, pack
from lmgolf.training.qat import QAT, qat_due, qat_targets
from lmgolf.training.trainer import train

CFG = ModelConfig(vocab_size=64, n_layer=2, d_model=32, n_head=2, context=16)
POLICY = PackPolicy(min_quant_numel=256, clip="std", clip_k=2.5,  # clip="std" so that clipping happens
                    group_storage={"embedding": "int6-row", "attention": "int4-row", "mlp": "ternary",
                                   "*.mlp.proj.weight": "fp8-row"})


def tiny_model(seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(CFG)


def export_model(model: nn.Module, policy: PackPolicy = POLICY) -> GPT:
    ref = GPT(CFG)
    ref.load_state_dict(dequantized_state_dict(model, policy))
    return ref


def tokens(seed: int = 1) -> torch.Tensor:
    return torch.randint(0, CFG.vocab_size, (2, CFG.context), generator=torch.Generator().manual_seed(seed))


def close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=0, atol=1e-5)


def test_targets_cover_every_tensor_with_its_export_storage():
    model = tiny_model()
    targets = qat_targets(model, POLICY)
    assert targets == storages_for(POLICY, model.state_dict())
    assert set(targets.values()) == {"int6-row", "int4-row", "ternary", "fp8-row", "fp16"}


def test_eager_forward_equals_the_export():
    model, x = tiny_model(), tokens()
    ref = export_model(model)
    with torch.no_grad():
        assert not close(model(x), ref(x))  # the quantization is visible
        assert close(QAT(model, POLICY, enabled=True)(x), ref(x))
        assert torch.equal(QAT(model, POLICY, enabled=False)(x), model(x))


@pytest.mark.parametrize("scope", ["tensor", "global"])
def test_pruning_and_low_rank_corrections_match_the_export(scope):
    policy = PackPolicy(min_quant_numel=256, prune=0.3, prune_scope=scope, prune_targets=("attention", "final_norm.*"),
                        lowrank={"blocks.1.mlp.up.weight": 2}, keep_fp32=("final_norm.weight",),
                        group_storage={"attention": "int4-row", "mlp": "int3-row"})
    model, x = tiny_model(), tokens()
    assert qat_targets(model, policy)["final_norm.weight"] == "fp32"  # pruned, so not the identity
    with torch.no_grad():
        assert close(QAT(model, policy, enabled=True)(x), export_model(model, policy)(x))


def switch_follows(wrapper: QAT, model: GPT, x: torch.Tensor) -> bool:
    """Compiled (aot_eager): off gives the float logits, then on gives the export's, then off again."""
    torch._dynamo.reset()
    compiled = torch.compile(wrapper, backend="aot_eager")
    ref = export_model(model)
    with torch.no_grad():
        float_logits, export_logits = model(x), ref(x)
        wrapper.enabled = False
        off = close(compiled(x), float_logits)
        wrapper.enabled = True
        on = close(compiled(x), export_logits)
        wrapper.enabled = False
        off_again = close(compiled(x), float_logits)
    assert off  # the first trace is right in any case
    return on and off_again


def test_compiled_forward_equals_the_export_and_follows_the_switch():
    model = tiny_model()
    assert switch_follows(QAT(model, POLICY), model, tokens())


class FoldedFlagQAT(QAT):
    """The pitfall: the flag is read at trace time without a guard, so the first graph keeps its value."""

    def forward(self, *args, **kwargs):
        if not _read_without_guard(self):
            return self.model(*args, **kwargs)
        return super().forward(*args, **kwargs)


@torch._dynamo.assume_constant_result
def _read_without_guard(wrapper) -> bool:
    return wrapper.enabled


def test_the_switch_test_catches_a_folded_flag():
    model = tiny_model()
    assert not switch_follows(FoldedFlagQAT(model, POLICY), model, tokens())


def test_gradients_are_straight_through():
    """The gradient of the QAT loss with respect to the weights is the float model's gradient at the
    snapped weights (the straight-through estimator), and it reaches every parameter."""
    model, x = tiny_model(), tokens()
    y = torch.roll(x, -1, dims=1)
    ref = export_model(model)
    for net in (QAT(model, POLICY, enabled=True), ref):
        logits = net(x)
        F.cross_entropy(logits.reshape(-1, logits.size(-1)), y.reshape(-1)).backward()
    grads = dict(ref.named_parameters())
    for name, p in model.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().sum() > 0, name
        assert torch.allclose(p.grad, grads[name].grad, rtol=1e-5, atol=1e-7), name


@pytest.mark.parametrize("reuse", [False, True])
def test_snaps_follow_weight_updates(reuse):
    """Fused Adam updates in place without bumping tensor versions: reuse needs invalidate()."""
    model, x = tiny_model(), tokens()
    wrapper = QAT(model, POLICY, enabled=True, reuse=reuse)
    with torch.no_grad():
        wrapper(x)
        model.blocks[0].attn.q.weight.mul_(3.0)  # an in-place update bumps the version
        assert close(wrapper(x), export_model(model)(x))
    opt = torch.optim.Adam(model.parameters(), lr=0.1, fused=True)
    for p in model.parameters():
        p.grad = torch.ones_like(p)
    opt.step()
    if reuse:
        wrapper.invalidate()  # as lmgolf.training.trainer does after every optimizer step
    with torch.no_grad():
        assert close(wrapper(x), export_model(model)(x))


class Shared(nn.Module):
    """One matrix under two names that the policy stores differently."""

    def __init__(self):
        super().__init__()
        self.a = nn.Linear(32, 32, bias=False)
        self.b = nn.Linear(32, 32, bias=False)
        self.b.weight = self.a.weight

    def forward(self, x):
        return self.b(self.a(x))


def test_a_shared_tensor_is_snapped_once_as_the_export_restores_it():
    policy = PackPolicy(min_quant_numel=256, group_storage={"a.weight": "int4-row", "b.weight": "int8-row"})
    model = Shared()
    assert qat_targets(model, policy) == {"b.weight": "int8-row"}  # load_state_dict writes b.weight last
    ref = Shared()
    ref.load_state_dict(dequantized_state_dict(model, policy))
    x = torch.randn(3, 32)
    with torch.no_grad():
        assert close(QAT(model, policy, enabled=True)(x), ref(x))


def test_due_is_monotone_in_progress():
    t = TrainConfig(qat=True, qat_start=0.9, qat_lr_scale=0.5, warmup=0.1, warmdown=0.5)
    fractions = [i / 100 for i in range(101)]
    due = [qat_due(f, t) for f in fractions]
    assert due == sorted(due) and due.index(True) == 75  # lr multiplier (1 - f) / 0.5 <= 0.5 from f = 0.75
    assert not qat_due(0.0, t)  # the warmup's low multiplier does not count
    assert not any(qat_due(f, TrainConfig(qat=False)) for f in fractions)
    assert all(qat_due(f, TrainConfig(qat=True)) for f in fractions)  # qat_start = 0: from the start


TINY = ["model.n_layer=2", "model.d_model=32", "model.n_head=2", "model.context=32", "train.batch_tokens=256",
        "train.micro_batch=4", "train.log_every=1", "train.dtype=fp32", "train.eval_tokens=512", "train.max_steps=8",
        "train.qat=true", "pack.min_quant_numel=256",
        'pack.group_storage={"embedding": "int8-row", "attention": "int6-row", "mlp": "int4-row"}']


def spy_on_snaps(monkeypatch) -> list:
    """The loop step (0-based, None before the loop) of every snap; lmgolf.training.trainer calls set_lr once a step."""
    loop, snaps = {"step": None}, []
    set_lr, snap_tensor = train_module.set_lr, qat_module.snap_tensor

    def counting_set_lr(*args):
        loop["step"] = 0 if loop["step"] is None else loop["step"] + 1
        set_lr(*args)

    def recording_snap(*args):
        snaps.append(loop["step"])
        return snap_tensor(*args)

    monkeypatch.setattr(train_module, "set_lr", counting_set_lr)
    monkeypatch.setattr(qat_module, "snap_tensor", recording_snap)
    return snaps


@pytest.mark.parametrize("overrides, switch", [
    (["train.qat_start=0.5", "train.compile=on"], 4),  # compiled (aot_eager): the graph must follow the switch
    (["train.qat_start=0.9", "train.qat_lr_scale=0.7"], 6),  # warmdown 0.4: multiplier 0.625 <= 0.7 at 6/8
])
def test_training_switches_on_at_the_chosen_point(byte_data, tmp_path, monkeypatch, overrides, switch):
    compile_ = torch.compile
    monkeypatch.setattr(torch, "compile", lambda net, **kw: compile_(net, **{**kw, "backend": "aot_eager"}))
    torch._dynamo.reset()
    snaps = spy_on_snaps(monkeypatch)
    cfg = load_config("cpu-demo", TINY + overrides)
    summary = train(cfg, byte_data, tmp_path / "r", progress=False)
    assert summary["qat_step"] == switch and summary["steps"] == 8
    assert json.loads((tmp_path / "r" / "summary.json").read_text())["qat_step"] == switch
    records = [json.loads(line) for line in (tmp_path / "r" / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r.get("qat_on")] == [switch]
    model, cfg = load_model(tmp_path / "r")
    n_targets = len(qat_targets(model, cfg.pack))
    in_loop = [s for s in snaps if s is not None]  # one snap per target and step: micro-batches share it
    # one snap per target and step, then once more for the final validation, which scores the export
    assert in_loop == [s for s in [*range(switch, 8), 7] for _ in range(n_targets)]
    report = pack(model, cfg, DataFolder(byte_data).tokenizer(), tmp_path / "r.lmg", cfg.pack)
    assert report.fits()
    tokens, nbytes = DataFolder(byte_data).val_tokens_and_bytes()
    packed = evaluate(load_artifact(tmp_path / "r.lmg")[0], tokens, nbytes, cfg.model.context, progress=False)
    assert packed.loss == pytest.approx(summary["val_loss"], rel=1e-5)
    ref = GPT(cfg.model)
    ref.load_state_dict(dequantized_state_dict(model, cfg.pack))
    x = torch.randint(0, cfg.model.vocab_size, (2, cfg.model.context))
    with torch.no_grad():
        assert close(QAT(model, cfg.pack, enabled=True)(x), ref(x))


def test_resume_keeps_the_switch(byte_data, tmp_path):
    cfg = lambda: load_config("cpu-demo", TINY + ["train.qat_start=0.5", "train.checkpoint_every=2"])  # noqa: E731
    full = train(cfg(), byte_data, tmp_path / "full", progress=False)

    def crash(step):
        if step == 6:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train(cfg(), byte_data, tmp_path / "cut", progress=False, on_step=crash)
    assert read_state(tmp_path / "cut")["extra"]["qat_step"] == 4
    resumed = train(cfg(), byte_data, tmp_path / "cut", resume=True, progress=False)
    assert resumed["qat_step"] == full["qat_step"] == 4 and resumed["val_loss"] == full["val_loss"]
