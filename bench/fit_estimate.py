"""How close `lmgolf fit`'s size estimate lands: estimate vs a real pack of the same weights.

    python bench/fit_estimate.py [--preset pg-baseline]

Sizes the preset at its initialization (lmgolf.study.fit.sizing_model) under several policies and codecs,
prints a markdown table and writes bench/results/fit_estimate.json.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from lmgolf import api
from lmgolf.config import PackPolicy, load_config, pack_policy
from lmgolf.data.tokenizers import train_tokenizer
from lmgolf.packing.artifact import tokenizer_header
from lmgolf.study.fit import estimate_packed_bytes, sizing_model

CASES = [("int6-emb8", ["codec=zstd", "byte_shuffle=true", "clip=std"]), ("int5-mlp", ["codec=lzma"]),
         ("int5-mlp", ["codec=zstd", "byte_shuffle=true"]), ("ternary", ["codec=zstd"]), ("int8", ["codec=zstd"])]


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--preset", default="pg-baseline")
    p.add_argument("--out", default="bench/results/fit_estimate.json")
    args = p.parse_args()
    cfg = load_config(args.preset)
    model, tokenizer = sizing_model(cfg.model), train_tokenizer("byte", [])
    rows = []
    print("| policy | overrides | real bytes | estimate error | estimate s | pack s |\n|---|---|---:|---:|---:|---:|")
    for name, overrides in CASES:
        policy = pack_policy(PackPolicy(), name, overrides)
        full = dataclasses.replace(cfg, pack=policy)
        started = time.perf_counter()
        estimate = estimate_packed_bytes(model, policy, {"config": full.to_dict(), "tokenizer": tokenizer_header(tokenizer)})
        estimate_s = time.perf_counter() - started
        with tempfile.TemporaryDirectory() as tmp:
            report = api.pack(api.Loaded(model, full, tokenizer), Path(tmp) / "m.lmg", policy=policy,
                              allow_over_budget=True)
        error = (estimate - report.artifact_bytes) / report.artifact_bytes
        rows.append({"policy": name, "overrides": overrides, "real": report.artifact_bytes, "estimate": estimate,
                     "error": error, "estimate_seconds": estimate_s, "pack_seconds": report.seconds})
        print(f"| {name} | {' '.join(overrides)} | {report.artifact_bytes:,} | {error:+.2%} | {estimate_s:.1f} | "
              f"{report.seconds:.1f} |", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"preset": args.preset, "rows": rows}, indent=2) + "\n")


if __name__ == "__main__":
    main()
