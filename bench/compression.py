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

from lmgolf import api
from lmgolf.codecs import CODECS
from lmgolf.config import PACK_POLICIES

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
    source = api.load(args.run, args.data, device="cpu")
    context = source.cfg.model.context
    results = {"run": str(args.run), "machine": platform.processor() or platform.machine(),
               "threads": torch.get_num_threads(), "policies": [], "codecs": [], "modes": []}
    tmp = Path(tempfile.mkdtemp())

    def score(target, **options):
        return api.score(target, progress=False, **options)

    float_eval = score(source).result
    results["float"] = float_eval.as_dict()
    print(f"float weights: {float_eval.bpb:.4f} bpb")

    print(f"\n| policy | storages | {args.codec} bytes | pack s | round-trip bpb | vs float |\n|---|---|---:|---:|---:|---:|")
    for name in PACK_POLICIES:
        report = api.pack(source, tmp / f"{name}.lmg", policy=name, codec=args.codec, allow_over_budget=True)
        result = score(api.load(tmp / f"{name}.lmg", source.data_path, device="cpu"))
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
                path = tmp / f"codec-{codec}-{bit_pack}-{shuffle}.lmg"
                report = api.pack(source, path, policy=MODE_POLICY, codec=codec, allow_over_budget=True,
                                  overrides={"byte_shuffle": shuffle, "bit_pack": bit_pack})
                state = api.load(path, device="cpu").model.state_dict()
                reference = reference or state
                same = all(torch.equal(state[k], reference[k]) for k in reference)
                results["codecs"].append({"codec": codec, "bit_pack": bit_pack, "byte_shuffle": shuffle,
                                          "bytes": report.artifact_bytes, "pack_seconds": report.seconds, "identical": same})
                print(f"| {codec} | {'bit-packed' if bit_pack else 'a byte each'} | {'yes' if shuffle else 'no'} | "
                      f"{report.artifact_bytes:,} | {report.seconds:.1f} | {'yes' if same else 'NO'} |")

    scored = api.load(tmp / f"{MODE_POLICY}.lmg", source.data_path, device="cpu")
    n = args.mode_tokens
    ttt_lr = {"lr": args.ttt_lr}
    runs = {
        "window (stride = context)": lambda: score(scored, max_tokens=n),
        f"sliding, stride {context // 4}": lambda: score(scored, stride=context // 4, max_tokens=n),
        "document-isolated": lambda: score(scored, mode="docs", max_tokens=n),
        "temperature (fitted on train)": lambda: score(scored, mode="temperature", max_tokens=n),
        "TTT, SGD all weights": lambda: score(scored, mode="ttt", ttt=ttt_lr, max_tokens=n),
        "TTT, SGD, reset per document": lambda: score(scored, mode="ttt", ttt={**ttt_lr, "reset_docs": True},
                                                      docs=True, max_tokens=n),
        "TTT, LoRA rank 8": lambda: score(scored, mode="ttt", ttt={"optimizer": "lora", "lr": args.ttt_lr * 10},
                                          max_tokens=n),
    }
    print(f"\n| mode ({MODE_POLICY} artifact, first {n:,} tokens) | tokens | bytes | loss | bpb | seconds |\n"
          "|---|---:|---:|---:|---:|---:|")
    for label, run in runs.items():
        result, seconds = timed(lambda: run().result)
        results["modes"].append({"mode": label, **result.as_dict(), "seconds": seconds})
        print(f"| {label} | {result.tokens:,} | {result.bytes:,} | {result.loss:.4f} | {result.bpb:.4f} | {seconds:.1f} |")

    full = score(scored, baselines=True)
    baselines = full.baselines
    results["baselines"] = baselines
    results["total_description_length"] = full.total_bpb
    print(f"\nvalidation {full.bytes:,} bytes: model {full.bpb:.4f} bpb; with the artifact's own bits "
          f"{results['total_description_length']:.4f}; classic compressors: {json.dumps(baselines)}")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
