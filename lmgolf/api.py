"""The Python API: load a run folder or an artifact, score it, train, pack and sample.

    import lmgolf
    run = lmgolf.train("runs/x/run", preset="cpu-demo", data="runs/x/data", max_steps=200)
    lmgolf.score(run).bpb
    lmgolf.pack(run)                                   # -> runs/x/run/model.lmg
    lmgolf.score(run.artifact).total_bpb               # the round-tripped artifact, its own bytes counted
    lmgolf.generate(run.artifact, "The ", 100)

The command line (lmgolf.cli) is argument plumbing over these functions; docs/api.md shows a session.
A bad argument raises ArgumentError, an LmgolfError that names it. The stages are imported inside the
functions, so that importing this module (and the command line) stays cheap.
"""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from lmgolf.errors import LmgolfError

if TYPE_CHECKING:
    from lmgolf.config import Config, PackPolicy
    from lmgolf.data.folder import DataFolder
    from lmgolf.data.tokenizers import Tokenizer
    from lmgolf.eval.evaluate import EvalResult
    from lmgolf.model.gpt import GPT
    from lmgolf.packing.writer import PackReport

MODES = ("window", "docs", "ttt", "temperature")
TTT_OPTIONS = ("chunk", "steps", "lr", "momentum", "optimizer", "lora_rank", "lora_alpha", "reset_docs")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("fp32", "bf16", "auto")
SPLITS = ("val", "test")  # score(split=...): the data folder's splits that can be scored
RUNNERS = ("plain", "compressed")
BUDGET = 16_000_000  # lmgolf.packing.artifact.BUDGET, repeated so that the signature needs no import
MAX_TEXT_BYTES = 16_000_000  # score(text=...): the most bytes of text read (about 20 bytes of memory each)

_NAME = object()  # spell(name): the argument itself, no value


# ---------------------------------------------------------------- errors


def python_spelling(name: str, value: object = _NAME) -> str:
    """An argument as a Python call writes it: stride, mode='ttt' or 'docs', ttt={'optimizer': 'lora'}."""
    outer, _, inner = name.partition(".")
    if value is _NAME:
        return f"{outer}[{inner!r}]" if inner else outer
    values = " or ".join(map(repr, value if isinstance(value, tuple) else (value,)))
    return f"{outer}={{{inner!r}: {values}}}" if inner else f"{outer}={values}"


class ArgumentError(LmgolfError):
    """A bad argument of an API call. `needs` and `unless` map other arguments to the values that the
    message asks for (a tuple: any one of them), so that the command line can word it with its flags."""

    def __init__(self, call: str, argument: str, problem: str = "", needs: dict | None = None,
                 unless: dict | None = None, note: str = ""):
        self.call, self.argument, self.problem, self.note = call, argument, problem, note
        self.needs, self.unless = needs or {}, unless or {}
        super().__init__(self.worded(call, python_spelling))

    def worded(self, call: str, spell: Callable[..., str]) -> str:
        """The one-line message, with `call` and every argument spelled by spell(name[, value])."""
        text = self.problem
        if self.unless:
            text += " unless " + " and ".join(spell(k, v) for k, v in self.unless.items())
        if self.needs:
            text = ", ".join(filter(None, [text, "needs " + " and ".join(spell(k, v) for k, v in self.needs.items())]))
        return f"{call} {spell(self.argument)}: {text}" + (f" ({self.note})" if self.note else "")


def _choice(call: str, argument: str, value: str, allowed: tuple[str, ...]) -> str:
    if value not in allowed:
        raise ArgumentError(call, argument, f"{value!r} is not one of {', '.join(allowed)}")
    return value


def _override_items(call: str, overrides: Sequence[str] | Mapping[str, Any]) -> list[str]:
    """`key=value` strings from a list of them or a mapping (non-string values written as JSON)."""
    if isinstance(overrides, str):
        raise ArgumentError(call, "overrides", f"a list of key=value strings or a dict, not the string {overrides!r}")
    if isinstance(overrides, Mapping):
        return [f"{k}={v if isinstance(v, str) else json.dumps(v)}" for k, v in overrides.items()]
    return list(overrides)


# ---------------------------------------------------------------- load


@dataclass
class Loaded:
    """A model ready to score, pack or sample, with everything it came with."""
    model: GPT = field(repr=False)
    cfg: Config = field(repr=False)
    tokenizer: Tokenizer = field(repr=False)
    data_path: str | None = None  # the data folder: the one asked for, else the one the run recorded
    info: dict = field(default_factory=dict, repr=False)  # artifact: its header info; run folder: summary.json
    path: Path | None = None
    kind: str = "memory"          # run | artifact | memory (built in memory, e.g. for sizing)

    @property
    def artifact_bytes(self) -> int | None:
        return self.info.get("artifact_bytes") if self.kind == "artifact" else None

    @property
    def device(self):
        return next(self.model.parameters()).device


def load(path: str | Path, data: str | Path | None = None, *, device: str = "auto") -> Loaded:
    """A run folder (the model of its last checkpoint) or a .lmg artifact (the dequantized model),
    with its config, tokenizer and data folder (`data`, else the one in run.json beside it, else None)."""
    from lmgolf.device import pick_device
    device = pick_device(_choice("load", "device", device, DEVICES))
    from lmgolf.training.loading import load_trained
    p = Path(path)
    trained = load_trained(p, device=device)
    model, cfg, tokenizer = trained.model, trained.cfg, trained.tokenizer
    kind, run_dir = trained.kind, p.parent if trained.kind == "artifact" else p
    info = trained.info if kind == "artifact" else _read_json(p / "summary.json")
    return Loaded(model, cfg, tokenizer, str(data) if data is not None else recorded_data(run_dir), info, p, kind)


def recorded_data(run_dir: str | Path) -> str | None:
    """The data folder a run was trained on, from its run.json (None: no run.json there)."""
    record = Path(run_dir) / "run.json"
    if not record.is_file():
        return None
    try:
        return json.loads(record.read_text())["data"]["path"]
    except (json.JSONDecodeError, UnicodeDecodeError, KeyError, TypeError):
        raise LmgolfError(f"{record}: corrupt run record, field 'data.path' missing") from None


def _read_json(path: Path) -> dict:
    """A JSON object from an optional file ({} when it is not there)."""
    from lmgolf.runfiles import read_json_object
    return read_json_object(path, "") if path.is_file() else {}


def _as_loaded(target, data, device: str) -> Loaded:
    """A Loaded as it is (with `data` if given), else loaded from the path (a Run's: its folder)."""
    if isinstance(target, Run):
        target = target.path
    if not isinstance(target, Loaded):
        return load(target, data, device=device)
    return target if data is None else dataclasses.replace(target, data_path=str(data))


def _data_folder(call: str, loaded: Loaded) -> DataFolder:
    """The loaded model's data folder, checked to be tokenized by its tokenizer."""
    from lmgolf.data.folder import DataFolder
    if loaded.data_path is None:
        where = loaded.path or "an in-memory model"
        raise ArgumentError(call, "data", f"needed, {where} has no run.json beside it to name the data folder it used")
    folder = DataFolder(loaded.data_path)
    if folder.fingerprint != loaded.tokenizer.fingerprint:
        raise LmgolfError(f"{folder.path}: tokenized with a different tokenizer than {loaded.path or 'the model'}")
    return folder


# ---------------------------------------------------------------- score


@dataclass
class Score:
    """An evaluation, and for an artifact its total description length."""
    result: EvalResult
    artifact_bytes: int | None = None  # an artifact's file size
    total_bpb: float | None = None     # (artifact bytes x 8 + model bits of the val text) / val bytes
    baselines: dict | None = None      # classic compressors on the same val text (lmgolf.eval.baselines)
    text: str | None = None            # score(text=PATH): the file or folder scored instead of the val split

    bpb = property(lambda self: self.result.bpb)
    loss = property(lambda self: self.result.loss)
    tokens = property(lambda self: self.result.tokens)
    bytes = property(lambda self: self.result.bytes)
    mode = property(lambda self: self.result.mode)

    def as_dict(self) -> dict:
        out = self.result.as_dict()
        if self.total_bpb is not None:
            out.update(artifact_bytes=self.artifact_bytes, total_bpb=self.total_bpb)
        if self.baselines is not None:
            out["baselines"] = self.baselines
        if self.text is not None:
            out["text"] = self.text
        return out

    def format(self) -> str:
        r = self.result
        lines, what = [r.format()], r.split if self.text is None else "text"
        if self.text is not None:
            lines.append(f"text {self.text}: {r.bytes:,} bytes coded in {r.bpb * r.bytes:,.0f} model bits "
                         f"({r.bpb * r.bytes / 8:,.0f} bytes)")
        if self.total_bpb is not None:
            lines.append(f"total description length: ({self.artifact_bytes:,} artifact bytes x 8 + {r.bpb:.4f} x "
                         f"{r.bytes:,} {what} bytes) / {r.bytes:,} = {self.total_bpb:.4f} bits/byte")
        if self.baselines is not None:
            b = self.baselines
            note = "" if b["exact_text"] else " (lossy tokenizer: the decoded text differs from the original)"
            lines.append(f"compressors on {b['val_bytes']:,} val bytes after {b['prefix_bytes']:,} training bytes{note}: "
                         + ", ".join(f"{k} {v:.4f}" for k, v in b["bpb"].items()) + " bits/byte")
        return "\n".join(lines)


def score(target, data: str | Path | None = None, *, mode: str = "window", stride: int | None = None,
          max_tokens: int | None = None, docs: bool = False, ttt: Mapping[str, Any] | None = None,
          fit_tokens: int | None = None, seed: int = 0, baselines: bool = False,
          baseline_prefix_bytes: int | None = None, dtype: str = "fp32", device: str = "auto",
          progress: bool = True, text: str | Path | None = None, max_text_bytes: int = MAX_TEXT_BYTES,
          split: str = "val") -> Score:
    """Validation loss and exact bits per byte of a run folder, an artifact, a Loaded or a Run.

    mode: window (sliding windows, `stride`) | docs (no context across documents) | ttt (score-first
    test-time training; `ttt` holds TTTConfig options: chunk, steps, lr, momentum, optimizer, lora_rank,
    lora_alpha, reset_docs) | temperature (logits / T, T fitted on `fit_tokens` training tokens).
    docs: document-isolated windows in the ttt and temperature modes. seed: LoRA init and the
    temperature's training windows. max_tokens: score only this prefix of the validation split.
    baselines: also the bpb of zlib, lzma, bz2 and zstd on the val text, after `baseline_prefix_bytes`
    of training text. An artifact's score carries its total description length. device: where a path
    is loaded (a Loaded stays where it is). text: a file (.jsonl: a document a line; else UTF-8 text),
    or a folder of .txt/.jsonl files, scored instead of the val split, encoded as a data folder's val split
    is (the temperature mode still fits T on the data folder's training tokens); refused past
    max_text_bytes. split: the data folder's split to score, val or test (PTB and WikiText-2 folders
    have an official test split; others are refused). Word tokenizers also get the word-level
    perplexity, exp(nats / words) (EvalResult.word_ppl)."""
    _choice("score", "split", split, SPLITS)
    if split != "val" and text is not None:
        raise ArgumentError("score", "text", "is scored instead of a split; leave split at its default, val")
    if split != "val" and baselines:
        raise ArgumentError("score", "baselines", "compare with the data folder's val text", needs={"split": "val"})
    ttt_config = _score_options(mode, max_tokens, docs, ttt, fit_tokens, seed, baselines, baseline_prefix_bytes, dtype)
    loaded = _as_loaded(target, data, device)
    context = loaded.cfg.model.context
    if stride is not None and not 1 <= stride <= context:
        raise ArgumentError("score", "stride", f"must lie in [1, {context}] (the model's context), got {stride}")
    val = None
    if text is not None:
        if baselines:
            raise ArgumentError("score", "baselines", "compares with the data folder's val text, not with text")
        val = _text_tokens(loaded.tokenizer, text, max_text_bytes)
    folder = _data_folder("score", loaded) if text is None or mode == "temperature" else None
    result = _evaluate(loaded, folder, mode, ttt_config, stride=stride, max_tokens=max_tokens, docs=docs,
                       fit_tokens=fit_tokens, seed=seed, dtype=dtype, progress=progress, val=val, split=split)
    out = Score(result, text=None if text is None else str(text))
    if loaded.kind == "artifact":  # its bytes count too
        from lmgolf.eval.baselines import total_description_length
        out.artifact_bytes = loaded.artifact_bytes
        out.total_bpb = total_description_length(out.artifact_bytes, result.bpb, max(result.bytes, 1))
    if baselines:
        from lmgolf.eval.baselines import DEFAULT_PREFIX_BYTES, baseline_report
        prefix = DEFAULT_PREFIX_BYTES if baseline_prefix_bytes is None else baseline_prefix_bytes
        out.baselines = baseline_report(folder, max_tokens, prefix)
    return out


def _score_options(mode, max_tokens, docs, ttt, fit_tokens, seed, baselines, baseline_prefix_bytes, dtype):
    """Refuses argument combinations that mean nothing; the TTTConfig of the ttt mode (else None)."""
    from lmgolf.eval.ttt import TTTConfig
    _choice("score", "mode", mode, MODES)
    _choice("score", "dtype", dtype, DTYPES)
    ttt = dict(ttt or {})
    if ttt and mode != "ttt":
        raise ArgumentError("score", "ttt", needs={"mode": "ttt"})
    unknown = sorted(ttt.keys() - set(TTT_OPTIONS))
    if unknown:
        raise ArgumentError("score", "ttt", f"unknown option {unknown[0]!r} (known: {', '.join(TTT_OPTIONS)})")
    for option in ("lora_rank", "lora_alpha"):
        if option in ttt and ttt.get("optimizer") != "lora":
            raise ArgumentError("score", f"ttt.{option}", needs={"ttt.optimizer": "lora"})
    if max_tokens is not None and max_tokens < 1:
        raise ArgumentError("score", "max_tokens", f"must be >= 1, got {max_tokens}")
    if fit_tokens is not None and mode != "temperature":
        raise ArgumentError("score", "fit_tokens", needs={"mode": "temperature"})
    if fit_tokens is not None and fit_tokens < 1:
        raise ArgumentError("score", "fit_tokens", f"must be >= 1, got {fit_tokens}")
    if docs and mode not in ("ttt", "temperature"):
        raise ArgumentError("score", "docs", needs={"mode": ("ttt", "temperature")},
                            note="the docs mode is plain scoring with documents isolated")
    if baseline_prefix_bytes is not None and not baselines:
        raise ArgumentError("score", "baseline_prefix_bytes", needs={"baselines": True})
    if baseline_prefix_bytes is not None and baseline_prefix_bytes < 0:
        raise ArgumentError("score", "baseline_prefix_bytes", f"must be >= 0, got {baseline_prefix_bytes}")
    if mode != "ttt":
        return None
    config = TTTConfig(docs=docs, seed=seed, **ttt)
    config.validate()
    return config


def _text_tokens(tokenizer: Tokenizer, text, max_text_bytes: int):
    """score(text=...): the text's documents as a data folder's val split: tokens and exact byte counts."""
    import numpy as np
    from lmgolf.data.corpora import text_files_documents
    from lmgolf.data.prepare import encode_val_documents
    if max_text_bytes < 1:
        raise ArgumentError("score", "max_text_bytes", f"must be >= 1, got {max_text_bytes}")
    parts = []
    for path, documents in text_files_documents(text, max_text_bytes):
        if not documents:
            continue
        tokens, nbytes = encode_val_documents(tokenizer, documents)
        if tokenizer.lossy and any(tokenizer.decode(tokenizer.encode(d)) != d for d in documents):
            raise LmgolfError(f"{path}: the model's {tokenizer.kind} tokenizer is lossy and cannot encode this "
                              "text exactly (characters it never saw in training)")
        parts.append((tokens, nbytes))
    return np.concatenate([t for t, _ in parts]), np.concatenate([b for _, b in parts])


def _evaluate(loaded: Loaded, folder: DataFolder | None, mode: str, ttt, *, stride, max_tokens, docs, fit_tokens, seed,
              dtype, progress, val=None, split: str = "val") -> EvalResult:
    tokens, nbytes = folder.split_tokens_and_bytes(split) if val is None else val
    result = _evaluate_split(loaded, folder, mode, ttt, tokens, nbytes, stride=stride, max_tokens=max_tokens,
                             docs=docs, fit_tokens=fit_tokens, seed=seed, dtype=dtype, progress=progress)
    result.split = split
    if loaded.tokenizer.kind == "word":
        from lmgolf.eval.evaluate import scored_words, word_perplexity
        result.word_ppl = word_perplexity(result.loss * result.tokens,
                                          scored_words(tokens, result.tokens, loaded.tokenizer.bos_id))
    return result


def _evaluate_split(loaded: Loaded, folder: DataFolder | None, mode: str, ttt, tokens, nbytes, *, stride, max_tokens,
                    docs, fit_tokens, seed, dtype, progress) -> EvalResult:
    from lmgolf.device import pick_dtype
    from lmgolf.eval.evaluate import evaluate, fit_temperature
    model, context, device = loaded.model, loaded.cfg.model.context, loaded.device
    common = dict(stride=stride, max_tokens=max_tokens, device=device, dtype=pick_dtype(dtype, device),
                  progress=progress, bos_id=loaded.tokenizer.bos_id)
    if mode == "ttt":
        from lmgolf.eval.ttt import evaluate_ttt
        return evaluate_ttt(model, tokens, nbytes, context, ttt, **common)
    temperature = None
    if mode == "temperature":
        sample = {} if fit_tokens is None else {"fit_tokens": fit_tokens}
        temperature = fit_temperature(model, folder.train_tokens(), context, seed=seed, device=device,
                                      dtype=common["dtype"], **sample)
    return evaluate(model, tokens, nbytes, context, docs=docs or mode == "docs", temperature=temperature, **common)


# ---------------------------------------------------------------- train


@dataclass
class Run:
    """A trained run folder: its config, the training summary, and (loaded on first use) its model."""
    path: Path
    cfg: Config = field(repr=False)
    summary: dict

    @functools.cached_property
    def model(self) -> GPT:
        """The model of the run's last checkpoint, on the CPU, in eval mode."""
        from lmgolf.training.checkpoint import load_model
        return load_model(self.path)[0]

    @property
    def checkpoint(self) -> Path:
        return self.path / "checkpoint"

    @property
    def artifact(self) -> Path:
        """Where pack() writes the run's artifact by default."""
        return self.path / "model.lmg"

    @property
    def data(self) -> str | None:
        return recorded_data(self.path)


def train(out: str | Path, *, preset: str | None = None, data: str | Path | None = None,
          overrides: Sequence[str] | Mapping[str, Any] = (), resume: bool = False, time_budget: float | None = None,
          max_steps: int | None = None, progress: bool = True) -> Run:
    """Trains a preset with `key=value` overrides (a list, or a dict {key: value}) into the run folder
    `out`, or with resume=True continues the run there from its checkpoint (on its recorded data folder
    unless `data` is given; the overrides a resume can honour apply, lmgolf.training.resume).
    time_budget (seconds) and max_steps set the budget."""
    from lmgolf.training.trainer import train as run_training
    items = _override_items("train", overrides)
    items += [f"train.time_budget={time_budget}"] if time_budget is not None else []
    items += [f"train.max_steps={max_steps}"] if max_steps is not None else []
    if resume:
        cfg, data = _resumed(out, preset, data, items)
    else:
        cfg = _fresh(preset, data, items)
    summary = run_training(cfg, data, out, resume=resume, progress=progress)
    return Run(Path(out), cfg, summary)


def _fresh(preset: str | None, data, items: list[str]) -> Config:
    from lmgolf.config import load_config
    if preset is None:
        raise ArgumentError("train", "preset", "required to start a run", unless={"resume": True})
    if data is None:
        raise ArgumentError("train", "data", "required to start a run")
    return load_config(preset, items)


def _resumed(out, preset: str | None, data, items: list[str]) -> tuple[Config, str | Path]:
    from lmgolf.training.resume import resumed_config
    if preset is not None:
        raise ArgumentError("train", "preset", "not used to resume: the run continues with its checkpoint's config")
    cfg = resumed_config(out, items)
    data = data if data is not None else recorded_data(out)
    if data is None:
        raise ArgumentError("train", "data", f"needed, {out} has no run.json to name the data folder it used")
    return cfg, data


# ---------------------------------------------------------------- pack


def pack(target, out: str | Path | None = None, *, policy: str | PackPolicy | None = None, codec: str | None = None,
         overrides: Sequence[str] | Mapping[str, Any] = (), runner: str = "plain", budget: int = BUDGET,
         allow_over_budget: bool = False, data: str | Path | None = None) -> PackReport:
    """Writes the compressed artifact of a run folder, a Run, an artifact or a Loaded to `out` (a run
    folder's default: RUN/model.lmg) and returns its byte report.

    policy: a named policy (lmgolf.config.PACK_POLICIES), a PackPolicy, or None for the config's pack
    section; codec and overrides (pack fields, e.g. {"clip": "search"}) apply on top. runner: the
    runner file whose bytes count as code. Refuses to write past `budget` bytes of artifact plus code
    unless allow_over_budget. data: GPTQ's calibration data (default: the run's)."""
    from lmgolf.packing.writer import pack as write_artifact
    _choice("pack", "runner", runner, RUNNERS)
    loaded = _as_loaded(target, data, "cpu")
    chosen = _pack_policy(loaded.cfg, policy, codec, _override_items("pack", overrides))
    if out is None and loaded.kind != "run":
        raise ArgumentError("pack", "out", f"required to pack {loaded.path or 'an in-memory model'} "
                                           "(only a run folder has a default, RUN/model.lmg)")
    out = loaded.path / "model.lmg" if out is None else out
    train_tokens = None
    if chosen.gptq and chosen.gptq_calibration == "train":
        train_tokens = _data_folder("pack", loaded).train_tokens()
    return write_artifact(loaded.model, loaded.cfg, loaded.tokenizer, out, chosen, budget=budget,
                          allow_over_budget=allow_over_budget, runner=runner, train_tokens=train_tokens)


def _pack_policy(cfg: Config, policy, codec: str | None, overrides: list[str]) -> PackPolicy:
    from lmgolf.config import PackPolicy, pack_policy
    overrides = overrides + ([f"codec={codec}"] if codec else [])
    if isinstance(policy, PackPolicy):
        return pack_policy(policy, None, overrides)
    return pack_policy(cfg.pack, policy, overrides)


# ---------------------------------------------------------------- generate


def generate(target, prompt: str = "", max_new_tokens: int = 200, *, temperature: float = 0.8,
             top_k: int | None = None, top_p: float | None = None, seed: int | None = 0,
             device: str = "auto", stream: bool = False):
    """The prompt and the text sampled after it from a run folder, an artifact, a Run or a Loaded
    (stops early at a document end). temperature 0 is greedy; the same seed gives the same text.
    max_new_tokens is at most lmgolf.serve.generate.MAX_NEW_TOKENS (16,384). stream=True: an iterator
    of text pieces as they are sampled (the prompt first), which join to the same text."""
    from lmgolf.serve.generate import stream as sample, text_pieces
    loaded = _as_loaded(target, None, device)
    tokenizer = loaded.tokenizer
    ids = [tokenizer.bos_id] + (tokenizer.encode(prompt) if prompt else [])
    new = sample(loaded.model, ids, max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p, seed=seed,
                 stop_id=tokenizer.bos_id)  # arguments are checked here, before the first token
    if stream:
        return (piece for part in ([prompt], text_pieces(tokenizer, new)) for piece in part if piece)
    return prompt + tokenizer.decode(list(new))


def export_hf(target, out: str | Path, *, tokenizer: bool = True, device: str = "cpu") -> list[str]:
    """Writes a Hugging Face folder (config.json, model.safetensors, tokenizer files) that transformers'
    AutoModelForCausalLM and AutoTokenizer load with no custom code (LlamaForCausalLM for RoPE models,
    GPT2LMHeadModel for learned positions); refuses, in one line naming the config field, a model option with
    no equivalent there, and a tokenizer with no export unless tokenizer=False. Returns the files written."""
    from lmgolf.serve.export_hf import export_hf as export
    loaded = _as_loaded(target, None, device)
    return export(loaded.model, loaded.cfg.model, loaded.tokenizer, out, with_tokenizer=tokenizer,
                  source=str(loaded.path or ""))


def export_gguf(target, out: str | Path, *, dtype: str = "f32", tokenizer: bool = True,
                device: str = "cpu") -> list[str]:
    """Writes a GGUF file (llama.cpp's `llama` architecture; dtype f32 or f16) for models of the Llama mapping;
    refuses other models in one line naming the config field. Returns notes (say, a tokenizer written as
    `none` because it has no GGUF mapping); empty when there are none."""
    from lmgolf.serve.export_gguf import DTYPES, export_gguf as export
    _choice("export_gguf", "dtype", dtype, DTYPES)
    loaded = _as_loaded(target, None, device)
    return export(loaded.model, loaded.cfg.model, loaded.tokenizer, out, dtype=dtype, with_tokenizer=tokenizer,
                  source=str(loaded.path or ""))


def check_legality(mode, model, tokens, nbytes, **options):
    """Checks an evaluation mode of your own as the built-in ones are checked (lmgolf.eval.legality)."""
    from lmgolf.eval.legality import check_legality as check
    return check(mode, model, tokens, nbytes, **options)
