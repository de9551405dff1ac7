"""Compression and evaluation figures for docs/compression.md, from one trained run folder.

    python bench/compression.py RUN [--data DATA] [--mode-tokens 65536] [--out bench/results/compression.json]

For each packing policy: artifact bytes, pack time and the round-trip bpb (full validation split).
For each codec (one policy): artifact bytes and pack time; the loaded weights are compared bit for bit.
For each evaluation mode (the int6-emb8 artifact, a validation prefix): bpb and time.
Then the classic compressors given the training text as a prefix, and the total description length.
Prints markdown tables and writes everything to a JSON file.
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
import time
from pathlib import Path

import torch

from lmgolf.codecs import CODECS
from lmgolf.packing.artifact import load_artifact
from lmgolf.eval.baselines import baseline_report, total_description_length
from lmgolf.training.checkpoint import load_model
from lmgolf.config import PACK_POLICIES, pack_policy
from lmgolf.data.folder import DataFolder
from lmgolf.eval.evaluate import evaluate, fit_temperature
from lmgolf.packing.writer import pack
from lmgolf.eval.ttt import TTTConfig, evaluate_ttt

MODE_POLICY = "int6-emb8"


def timed(fn):
    started = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - started


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("run")
    p.add_argument("--data", default=None)
    p.add_argument("--codec", default="lzma", help="codec of the policy table")
    p.add_argument("--mode-tokens", type=int, default=65536, help="validation prefix for the evaluation modes")
    p.add_argument("--ttt-lr", type=float, default=1e-3)
    p.add_argument("--out", default="bench/results/compression.json")
    args = p.parse_args()
    model, cfg = load_model(args.run)
    data = DataFolder(args.data or json.loads((Path(args.run) / "run.json").read_text())["data"]["path"])
    tokenizer, train_tokens = data.tokenizer(), data.train_tokens()
    tokens, nbytes = data.val_tokens_and_bytes()
    context = cfg.model.context
    results = {"run": str(args.run), "machine": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "policies": [], "codecs": [], "modes": []}
    tmp = Path(tempfile.mkdtemp())

    float_eval = evaluate(model, tokens, nbytes, context, progress=False)
    results["float"] = float_eval.as_dict()
    print(f"float weights: {float_eval.bpb:.4f} bpb")

    print(f"\n| policy | storages | {args.codec} bytes | pack s | round-trip bpb | vs float |\n|---|---|---:|---:|---:|---:|")
    for name in PACK_POLICIES:
        policy = pack_policy(cfg.pack, name, [f"codec={args.codec}"])
        report = pack(model, cfg, tokenizer, tmp / f"{name}.lmg", policy, allow_over_budget=True,
                      train_tokens=train_tokens)
        loaded = load_artifact(tmp / f"{name}.lmg")[0]
        result = evaluate(loaded, tokens, nbytes, context, progress=False)
        storages = ", ".join(f"{g['group']} {g['storage']}" for g in report.groups if g["params"] >= 65536)
        results["policies"].append({"policy": name, "bytes": report.artifact_bytes, "pack_seconds": report.seconds,
                                    "bpb": result.bpb, "storages": storages})
        print(f"| {name} | {storages} | {report.artifact_bytes:,} | {report.seconds:.1f} | {result.bpb:.4f} | "
              f"{result.bpb - float_eval.bpb:+.4f} |")

    print(f"\n| codec ({MODE_POLICY}) | int6 codes | byte shuffle | bytes | pack s | weights identical |\n"
          "|---|---|---|---:|---:|---|")
    reference = None
    for codec in CODECS:
        for bit_pack in (True, False):
            for shuffle in (False, True):
                policy = pack_policy(cfg.pack, MODE_POLICY, [f"codec={codec}", f"byte_shuffle={str(shuffle).lower()}",
                                                             f"bit_pack={str(bit_pack).lower()}"])
                path = tmp / f"codec-{codec}-{bit_pack}-{shuffle}.lmg"
                report = pack(model, cfg, tokenizer, path, policy, allow_over_budget=True)
                state = load_artifact(path)[0].state_dict()
                reference = reference or state
                same = all(torch.equal(state[k], reference[k]) for k in reference)
                results["codecs"].append({"codec": codec, "bit_pack": bit_pack, "byte_shuffle": shuffle,
                                          "bytes": report.artifact_bytes, "pack_seconds": report.seconds, "identical": same})
                print(f"| {codec} | {'bit-packed' if bit_pack else 'a byte each'} | {'yes' if shuffle else 'no'} | "
                      f"{report.artifact_bytes:,} | {report.seconds:.1f} | {'yes' if same else 'NO'} |")

    artifact = tmp / f"{MODE_POLICY}.lmg"
    scored, _, _, info = load_artifact(artifact)
    n = args.mode_tokens
    runs = {
        "window (stride = context)": lambda: evaluate(scored, tokens, nbytes, context, max_tokens=n, progress=False),
        f"sliding, stride {context // 4}": lambda: evaluate(scored, tokens, nbytes, context, stride=context // 4,
                                                            max_tokens=n, progress=False),
        "document-isolated": lambda: evaluate(scored, tokens, nbytes, context, max_tokens=n, docs=True,
                                              bos_id=data.bos_id, progress=False),
        "temperature (fitted on train)": lambda: evaluate(
            scored, tokens, nbytes, context, max_tokens=n, progress=False,
            temperature=fit_temperature(scored, train_tokens, context)),
        "TTT, SGD all weights": lambda: evaluate_ttt(scored, tokens, nbytes, context, TTTConfig(lr=args.ttt_lr),
                                                     max_tokens=n, bos_id=data.bos_id, progress=False),
        "TTT, SGD, reset per document": lambda: evaluate_ttt(
            scored, tokens, nbytes, context, TTTConfig(lr=args.ttt_lr, reset_docs=True, docs=True),
            max_tokens=n, bos_id=data.bos_id, progress=False),
        "TTT, LoRA rank 8": lambda: evaluate_ttt(scored, tokens, nbytes, context,
                                                 TTTConfig(optimizer="lora", lr=args.ttt_lr * 10),
                                                 max_tokens=n, bos_id=data.bos_id, progress=False),
    }
    print(f"\n| mode ({MODE_POLICY} artifact, first {n:,} tokens) | tokens | bytes | loss | bpb | seconds |\n"
          "|---|---:|---:|---:|---:|---:|")
    for label, run in runs.items():
        result, seconds = timed(run)
        results["modes"].append({"mode": label, **result.as_dict(), "seconds": seconds})
        print(f"| {label} | {result.tokens:,} | {result.bytes:,} | {result.loss:.4f} | {result.bpb:.4f} | {seconds:.1f} |")

    full = evaluate(scored, tokens, nbytes, context, progress=False)
    baselines = baseline_report(data)
    results["baselines"] = baselines
    results["total_description_length"] = total_description_length(info["artifact_bytes"], full.bpb, full.bytes)
    print(f"\nvalidation {full.bytes:,} bytes: model {full.bpb:.4f} bpb; with the artifact's own bits "
          f"{results['total_description_length']:.4f}; classic compressors: {json.dumps(baselines)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
