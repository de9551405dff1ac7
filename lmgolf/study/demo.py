"""The built-in default job: prepare a corpus, train `cpu-demo`, pack, score the artifact, generate.

The default corpus, `stdlib-docs`, is a demo corpus: the docstrings of the Python standard library
plus `pydoc_data.topics`, real English text present on every machine with Python.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from lmgolf.config import PackPolicy
from lmgolf.packing.artifact import load_artifact
from lmgolf.packing.writer import pack
from lmgolf.training.checkpoint import load_model
from lmgolf.config import load_config
from lmgolf.data.folder import DataFolder
from lmgolf.eval.evaluate import evaluate
from lmgolf.serve.generate import generate
from lmgolf.data.prepare import prepare_data
from lmgolf.training.trainer import train


def run_demo(out: str | Path = "runs/demo", time_budget: float = 240.0, corpus: str = "stdlib-docs",
             tokenizer: str = "bpe", vocab_size: int | None = 512, prompt: str = "The ") -> dict:
    out = Path(out)
    started = time.perf_counter()
    data_dir, run_dir = out / "data", out / "run"
    print(f"[1/5] preparing {corpus} with a {tokenizer} tokenizer -> {data_dir}", flush=True)
    prepare_data(corpus, tokenizer, data_dir, vocab_size=vocab_size if tokenizer in ("bpe", "unigram") else None,
                 overwrite=True)
    print(f"[2/5] training cpu-demo for {time_budget:.0f} s -> {run_dir}", flush=True)
    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config("cpu-demo", [f"train.time_budget={time_budget}"])
    summary = train(cfg, data_dir, run_dir)
    print("[3/5] packing the artifact", flush=True)
    model, cfg = load_model(run_dir)
    data = DataFolder(data_dir)
    report = pack(model, cfg, data.tokenizer(), run_dir / "model.lmg", PackPolicy(codec="zlib"))
    print(report.format())
    print("[4/5] scoring the artifact after a full round trip", flush=True)
    packed_model, packed_cfg, packed_tok, _ = load_artifact(run_dir / "model.lmg")
    tokens, nbytes = data.val_tokens_and_bytes()
    result = evaluate(packed_model, tokens, nbytes, packed_cfg.model.context)
    print("[5/5] sampling from the artifact", flush=True)
    ids = generate(packed_model, [packed_tok.bos_id] + packed_tok.encode(prompt), 200, temperature=0.8, top_k=50,
                   seed=0, stop_id=packed_tok.bos_id)
    sample = prompt + packed_tok.decode(ids)
    print()
    print(f"trained {summary['steps']} steps, {summary['tokens']:,} tokens in {summary['elapsed']:.0f} s; "
          f"checkpoint val bpb {summary['val_bpb']:.4f}")
    print(f"artifact val bpb   {result.bpb:.4f}  ({result.tokens:,} tokens, {result.bytes:,} bytes of validation text)")
    print(f"artifact bytes     {report.artifact_bytes:,} + code {report.code_bytes:,} = {report.total_bytes:,} "
          f"of {report.budget:,}")
    print(f"sample:\n{sample}")
    print(f"\ndone in {time.perf_counter() - started:.0f} s; everything is in {out}/")
    return {"train": summary, "artifact_bpb": result.bpb, "artifact_bytes": report.artifact_bytes,
            "total_bytes": report.total_bytes, "sample": sample}
