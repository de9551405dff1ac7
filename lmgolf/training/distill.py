"""Knowledge distillation (train.teacher): the student learns from a teacher's softened predictions.

    loss = a x T^2 x KL(softmax(teacher / T) || softmax(student / T)) + (1 - a) x cross-entropy

with a = train.distill_alpha and T = train.distill_temperature (Hinton et al., 2015: the T^2 keeps the
soft term's gradient scale independent of T); both terms are means over the tokens. The teacher is an
lmgolf run folder (the model of its last checkpoint), an .lmg artifact (its dequantized weights), or a
Hugging Face causal LM in a local folder (loaded with transformers, local files only). It must use the
student's tokenizer: the same fingerprint for lmgolf teachers; for a Hugging Face folder, its tokenizer
must have the student's vocabulary size and encode a probe text to the same ids. The teacher runs in
inference mode inside the training step, so its time counts against the wall-clock budget.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from lmgolf.data.tokenizers import Tokenizer
from lmgolf.device import autocast
from lmgolf.errors import LmgolfError
from lmgolf.model.count import count_module
from lmgolf.training.loading import is_trained_model, load_trained

# what a Hugging Face teacher's tokenizer must encode exactly as the student's does
PROBE = ("The quick brown fox jumps over the lazy dog.\n  Numbers 0123456789, punctuation !?;:'\"()[]{}<>-_=+/\\@#$%^&*~`|\n"
         "\tna\u00efve caf\u00e9 \u2014 \u00c9t\u00e9, stra\u00dfe, \u65e5\u672c\u8a9e, \u0436\u0438\u0437\u043d\u044c, "
         "\U0001f600 end.\n")


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, targets: torch.Tensor,
                 alpha: float, temperature: float) -> torch.Tensor:
    """a x T^2 x KL(teacher_T || student_T) + (1 - a) x cross-entropy, each a mean over the tokens."""
    vocab = student_logits.size(-1)
    at_least_fp32 = torch.promote_types(student_logits.dtype, torch.float32)  # fp32, or fp64 (for gradcheck)
    student = student_logits.reshape(-1, vocab).to(at_least_fp32)
    ce = F.cross_entropy(student, targets.reshape(-1))
    if not alpha:
        return ce
    log_student = F.log_softmax(student / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher_logits.reshape(-1, vocab).to(at_least_fp32) / temperature, dim=-1)
    kl = F.kl_div(log_student, log_teacher, log_target=True, reduction="batchmean")  # sum / tokens
    return alpha * temperature ** 2 * kl + (1 - alpha) * ce


class Teacher:
    """A frozen model in eval mode whose logits (over the student's vocabulary) the student learns from."""

    def __init__(self, model: nn.Module, vocab_size: int, device: torch.device, dtype: torch.dtype, source: str,
                 hugging_face: bool = False):
        self.model = model.to(device).eval().requires_grad_(False)
        self.vocab_size, self.device, self.dtype, self.source = vocab_size, device, dtype, source
        self.hugging_face = hugging_face

    def forward_flops_per_token(self, context: int) -> int:
        """The teacher's forward FLOPs per token over windows of `context`, which the step pays too: an lmgolf
        model's exact count; for a Hugging Face model, 2 per weight of its matrices (embedding lookups are
        free), attention's scores left out."""
        if not self.hugging_face:
            return count_module(self.model, context).forward_flops_per_token
        lookups = {id(m.weight) for m in self.model.modules() if isinstance(m, nn.Embedding)}
        tied = {id(self.model.get_output_embeddings().weight)}
        return 2 * sum(p.numel() for p in self.model.parameters() if p.dim() >= 2 and (id(p) not in lookups or id(p) in tied))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(batch, time, student vocab) float32 logits for token ids x, an ordinary tensor (not an
        inference tensor), so that autograd may save it for the student's backward."""
        with torch.inference_mode(), autocast(self.device, self.dtype):
            out = self.model(input_ids=x, use_cache=False).logits if self.hugging_face else self.model(x)
            out = out[..., :self.vocab_size].float()
        return out.clone()


def load_teacher(spec: str, student: Tokenizer, context: int, device: torch.device, dtype: torch.dtype) -> Teacher:
    """The teacher named by train.teacher, refused with a one-line error unless it uses the student's tokenizer."""
    path = Path(spec)
    where = f"config field train.teacher: {spec}"
    if is_trained_model(path):
        trained = load_trained(path, device=device, what=where)
        return _lmgolf_teacher(trained.model, trained.cfg, trained.tokenizer, student, context, device, dtype, where,
                               spec)
    if (path / "config.json").is_file():
        return _hugging_face_teacher(path, student, context, device, dtype, where)
    raise LmgolfError(f"{where}: not an lmgolf run folder, an .lmg artifact or a Hugging Face model folder")


def describe(tokenizer: Tokenizer) -> str:
    return f"{tokenizer.kind} tokenizer (vocab {tokenizer.vocab_size}, fingerprint {tokenizer.fingerprint[:12]})"


def _lmgolf_teacher(model, cfg, tokenizer: Tokenizer, student: Tokenizer, context: int, device, dtype,
                    where: str, spec: str) -> Teacher:
    if tokenizer.fingerprint != student.fingerprint:
        raise LmgolfError(f"{where}: the teacher's {describe(tokenizer)} is not the student's {describe(student)}; "
                          "distillation needs the same tokenizer")
    if cfg.model.positions == "learned" and cfg.model.context < context:
        raise LmgolfError(f"{where}: the teacher's learned positions cover {cfg.model.context} tokens, fewer than "
                          f"the student's model.context {context}")
    return Teacher(model, student.vocab_size, device, dtype, spec)


def _hugging_face_teacher(path: Path, student: Tokenizer, context: int, device, dtype, where: str) -> Teacher:
    try:
        import transformers
    except ImportError:
        raise LmgolfError(f"{where}: a Hugging Face teacher needs the `transformers` package") from None
    try:
        config = json.loads((path / "config.json").read_text())
        tokenizer = transformers.AutoTokenizer.from_pretrained(path, local_files_only=True)
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LmgolfError(f"{where}: no Hugging Face tokenizer to compare with the student's {describe(student)} "
                          f"({str(e).splitlines()[0] if str(e) else type(e).__name__})") from None
    ids = tokenizer(PROBE, add_special_tokens=False)["input_ids"]
    if len(tokenizer) != student.vocab_size or ids != student.encode(PROBE):
        raise LmgolfError(f"{where}: the teacher's Hugging Face tokenizer (vocab {len(tokenizer)}, "
                          f"{'the same' if ids == student.encode(PROBE) else 'other'} ids for the probe text) is not "
                          f"the student's {describe(student)}; distillation needs the same tokenizer")
    positions = config.get("max_position_embeddings") if isinstance(config, dict) else None
    if isinstance(positions, int) and positions < context:
        raise LmgolfError(f"{where}: the teacher reads at most {positions} positions, fewer than the student's "
                          f"model.context {context}")
    try:
        model = transformers.AutoModelForCausalLM.from_pretrained(path, local_files_only=True).float()
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise LmgolfError(f"{where}: cannot load the Hugging Face model ({str(e).splitlines()[0]})") from None
    vocab = model.get_output_embeddings().weight.size(0)
    if vocab < student.vocab_size:
        raise LmgolfError(f"{where}: the teacher predicts {vocab} tokens, fewer than the student's {student.vocab_size}")
    return Teacher(model, student.vocab_size, device, dtype, str(path), hugging_face=True)
