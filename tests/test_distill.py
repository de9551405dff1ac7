"""Distillation (train.teacher, lmgolf.training.distill): the loss against its formula, and teachers from an
lmgolf run folder, an artifact and a local Hugging Face folder, with the student's tokenizer or refused."""

import json
import shutil
import time

import pytest
import torch

from conftest import TINY_RUN, assert_one_line_error, cli, tiny_cfg
from lmgolf.data.tokenizers import ByteTokenizer, CharTokenizer
from lmgolf.errors import LmgolfError
from lmgolf.training import distill
from lmgolf.training.distill import distill_loss, load_teacher
from lmgolf.training.trainer import train

CPU = torch.device("cpu")


def reference_loss(s, t, y, alpha, T):
    """The formula written out: a T^2 mean_i sum_v p_iv (log p_iv - log q_iv) + (1 - a) mean_i -log softmax(s_i)[y_i]."""
    p = torch.exp(t / T) / torch.exp(t / T).sum(-1, keepdim=True)
    log_q = s / T - torch.log(torch.exp(s / T).sum(-1, keepdim=True))
    kl = (p * (torch.log(p) - log_q)).sum(-1).mean()
    ce = -(s - torch.log(torch.exp(s).sum(-1, keepdim=True))).gather(-1, y[:, None]).mean()
    return alpha * T ** 2 * kl + (1 - alpha) * ce


@pytest.mark.parametrize("alpha,T", [(0.5, 2.0), (1.0, 1.0), (0.3, 4.0), (0.0, 2.0)])
def test_distill_loss_and_its_gradient_equal_the_reference_formula(alpha, T):
    gen = torch.Generator().manual_seed(0)
    s = torch.randn(2, 5, 11, generator=gen, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 5, 11, generator=gen, dtype=torch.float64) * 3
    y = torch.randint(0, 11, (2, 5), generator=gen)
    loss = distill_loss(s, t, y, alpha, T)
    ref = reference_loss(s.view(10, 11), t.view(10, 11), y.view(10), alpha, T)
    torch.testing.assert_close(loss, ref, rtol=1e-12, atol=1e-12)
    (grad,) = torch.autograd.grad(loss, s)
    (ref_grad,) = torch.autograd.grad(ref, s)
    torch.testing.assert_close(grad, ref_grad, rtol=1e-10, atol=1e-12)
    # closed form: a T (q_T - p_T) / N + (1 - a) (q - onehot(y)) / N over the N = 10 tokens
    q_T, p_T, q = (s.detach() / T).softmax(-1), (t / T).softmax(-1), s.detach().softmax(-1)
    onehot = torch.nn.functional.one_hot(y, 11).double()
    torch.testing.assert_close(grad, (alpha * T * (q_T - p_T) + (1 - alpha) * (q - onehot)) / 10)
    assert torch.autograd.gradcheck(lambda x: distill_loss(x, t, y, alpha, T), (s,))


def test_a_teacher_equal_to_the_student_leaves_only_the_weighted_cross_entropy():
    s = torch.randn(4, 7, 13)
    y = torch.randint(0, 13, (4, 7))
    ce = torch.nn.functional.cross_entropy(s.view(-1, 13), y.view(-1))
    torch.testing.assert_close(distill_loss(s, s.clone(), y, 0.7, 3.0), 0.3 * ce)


@pytest.fixture(scope="module")
def teacher_run(byte_data, tmp_path_factory):
    out = tmp_path_factory.mktemp("teacher") / "run"
    train(tiny_cfg("train.max_steps=2"), byte_data, out, progress=False)
    return out


def losses(run_dir):
    return [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]


def test_an_lmgolf_run_folder_teaches_inside_the_timed_step(byte_data, teacher_run, tmp_path, monkeypatch):
    plain = train(tiny_cfg("train.max_steps=2"), byte_data, tmp_path / "plain", progress=False)
    calls = []
    logits = distill.Teacher.logits

    def slow_logits(self, x):  # the teacher's time must land in the step's elapsed seconds
        calls.append(x.shape)
        time.sleep(0.05)
        return logits(self, x)

    monkeypatch.setattr(distill.Teacher, "logits", slow_logits)
    summary = train(tiny_cfg("train.max_steps=2", f"train.teacher={teacher_run}", "train.distill_alpha=0.5"),
                    byte_data, tmp_path / "student", progress=False)
    assert summary["steps"] == 2 and len(calls) == 4  # 2 steps x 2 micro-batches
    assert summary["elapsed"] >= 0.05 * len(calls)
    assert losses(tmp_path / "student") != losses(tmp_path / "plain")
    assert torch.isfinite(torch.tensor(losses(tmp_path / "student"))).all()
    assert plain["steps"] == 2


def test_the_logged_flops_count_the_teachers_forward_at_the_students_context(byte_data, teacher_run, tmp_path):
    from lmgolf.model.count import count_config
    cfg = tiny_cfg("train.max_steps=1", f"train.teacher={teacher_run}")
    train(cfg, byte_data, tmp_path / "student", progress=False)
    (row,) = [r for r in map(json.loads, (tmp_path / "student" / "metrics.jsonl").read_text().splitlines()) if "tok_s" in r]
    teacher = load_teacher(str(teacher_run), ByteTokenizer(), cfg.model.context, CPU, torch.float32)
    student = count_config(cfg.model).train_flops_per_token
    expected = student + teacher.forward_flops_per_token(cfg.model.context)
    assert teacher.forward_flops_per_token(cfg.model.context) > 0
    assert row["flops_s"] / row["tok_s"] == pytest.approx(expected, rel=1e-12)


def test_an_artifact_teaches_with_its_dequantized_weights(teacher_run):
    import lmgolf
    from lmgolf.packing.artifact import load_artifact
    lmgolf.pack(teacher_run)
    teacher = load_teacher(str(teacher_run / "model.lmg"), ByteTokenizer(), 32, CPU, torch.float32)
    model = load_artifact(teacher_run / "model.lmg")[0]
    x = torch.randint(0, 257, (2, 32))
    out = teacher.logits(x)
    assert not out.is_inference() and out.shape == (2, 32, 257)
    assert torch.equal(out, model(x))


def save_hf_teacher(folder, vocab_size=257, drop_bos=False):
    """A tiny LlamaForCausalLM over the byte vocabulary, with the byte tokenizer as Hugging Face files."""
    pytest.importorskip("transformers", reason="a Hugging Face teacher needs the export extra (transformers)")
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmgolf.serve.export_hf import tokenizer_files
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=64, bos_token_id=256,
                         eos_token_id=None, pad_token_id=None)
    LlamaForCausalLM(config).save_pretrained(folder)
    files = tokenizer_files(ByteTokenizer())
    if drop_bos:
        spec = json.loads(files["tokenizer.json"])
        del spec["model"]["vocab"]["<bos>"]
        files["tokenizer.json"] = json.dumps(spec)
    for name, text in files.items():
        (folder / name).write_text(text)
    return folder


def test_a_tiny_hugging_face_model_teaches(byte_data, tmp_path):
    folder = save_hf_teacher(tmp_path / "hf")
    teacher = load_teacher(str(folder), ByteTokenizer(), 32, CPU, torch.float32)
    x = torch.randint(0, 257, (2, 32))
    assert teacher.logits(x).shape == (2, 32, 257)
    summary = train(tiny_cfg("train.max_steps=2", f"train.teacher={folder}", "train.distill_alpha=0.9",
                             "train.distill_temperature=1.5"), byte_data, tmp_path / "student", progress=False)
    assert summary["steps"] == 2 and torch.isfinite(torch.tensor(summary["val_loss"]))
    # 2 FLOPs per weight of its matrices: q, k, v, o (32 x 32 each), gate, up, down (32 x 64 each), the head (32 x 257)
    assert teacher.forward_flops_per_token(32) == 2 * (4 * 32 * 32 + 3 * 32 * 64 + 32 * 257)


def test_an_lmgolf_hugging_face_export_teaches_with_the_runs_logits(byte_data, tmp_path):
    pytest.importorskip("transformers", reason="a Hugging Face teacher needs the export extra (transformers)")
    from lmgolf import api
    from lmgolf.training.checkpoint import load_model
    llama = ["model.embed_norm=false", "model.qk_norm=false", "model.q_gain=null", "model.logit_softcap=null",
             "model.output_scales=false", "model.norm_gain=true", "model.mlp=swiglu", "model.zero_init_proj=false"]
    train(tiny_cfg("train.max_steps=1", *llama), byte_data, tmp_path / "run", progress=False)
    api.export_hf(tmp_path / "run", tmp_path / "hf")
    teacher = load_teacher(str(tmp_path / "hf"), ByteTokenizer(), 32, CPU, torch.float32)
    x = torch.randint(0, 257, (2, 32))
    with torch.no_grad():
        torch.testing.assert_close(teacher.logits(x), load_model(tmp_path / "run")[0](x), rtol=1e-4, atol=1e-4)


def test_a_hugging_face_teacher_with_another_tokenizer_is_refused(tmp_path):
    folder = save_hf_teacher(tmp_path / "hf", drop_bos=True)
    with pytest.raises(LmgolfError) as e:
        load_teacher(str(folder), ByteTokenizer(), 32, CPU, torch.float32)
    message = str(e.value)
    assert "\n" not in message and "train.teacher" in message
    assert "Hugging Face tokenizer (vocab 256" in message and "byte tokenizer (vocab 257" in message


def test_a_teacher_with_another_tokenizer_is_refused_naming_both(capsys, byte_data, teacher_run, tmp_path):
    other = tmp_path / "char-teacher"
    shutil.copytree(teacher_run, other)
    shutil.rmtree(other / "tokenizer")
    (other / "tokenizer").mkdir()
    char = CharTokenizer(list("abc"))
    char.save(other / "tokenizer")
    code, _, err = cli(capsys, "train", "--preset", "cpu-demo", "--data", byte_data, "--out", tmp_path / "student",
                       "--max-steps", 1, "--quiet", *TINY_RUN, f"train.teacher={other}")
    assert_one_line_error(code, err, "train.teacher", f"char tokenizer (vocab {char.vocab_size}, fingerprint "
                          f"{char.fingerprint[:12]})", f"byte tokenizer (vocab 257, fingerprint {ByteTokenizer().fingerprint[:12]})")
    assert not (tmp_path / "student").exists()


def test_distillation_fields_are_checked():
    for override, name in (("train.distill_alpha=1.5", "train.distill_alpha"),
                           ("train.distill_temperature=0", "train.distill_temperature"),
                           ('train.teacher=" "', "train.teacher")):
        with pytest.raises(LmgolfError, match=name):
            tiny_cfg(override)
    with pytest.raises(LmgolfError, match="not an lmgolf run folder"):
        load_teacher("/nonexistent/teacher", ByteTokenizer(), 32, CPU, torch.float32)
