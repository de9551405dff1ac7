"""lmgolf and nanoGPT side by side on this machine: training speed at the same shape, or quality of nanoGPT's
CPU recipe against an lmgolf preset, both scored on the whole Tiny Shakespeare val split. Writes a JSON file.

    python bench/vs_nanogpt.py speed --pairs 3                        # 6 x 384, context 256, 64 sequences, fp32
    python bench/vs_nanogpt.py speed --pairs 3 --dtype bf16           # lmgolf in bf16 against nanoGPT's fp32
    python bench/vs_nanogpt.py quality --seeds 3                      # equal iterations (2000)
    python bench/vs_nanogpt.py quality --seeds 3 --equal wallclock --preset cpu-demo

speed: nanoGPT's train.py and `lmgolf train` alternate (AB, BA, ...), N pairs; tokens/s are the medians of
each side's own step timings (nanoGPT's "iter N ... time Yms" lines, lmgolf's metrics.jsonl) after --warmup
steps. nanoGPT on CPU always trains in fp32 (it has no CPU autocast): with --dtype bf16 only lmgolf runs
in bf16, and each side's share is of the measured matmul peak in its own dtype.
quality: nanoGPT's README CPU recipe (4 x 128, context 64, batch 12, 2000 iterations, lr_decay_iters = the
iterations, dropout 0), then the lmgolf preset with as many steps (--equal iterations) or with nanoGPT's
training clock as its time budget (--equal wallclock: the sum of nanoGPT's iteration times, its evaluation
passes left out, as lmgolf's budget leaves out its own). One scorer for both: non-overlapping windows of
each model's own context (or --score-context for both) over the whole val split, every character after the
first scored once, so both sides score the same characters.
Run one side at a time on an otherwise idle machine; children get --threads threads, as does the peak.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import torch

from nanogpt_side import (REPO, copy_nanogpt, full_val_loss, gemm_peak, gemm_shapes, lmgolf_scorer, lmgolf_step_rates,
                          median_rate, nanogpt_scorer, nanogpt_step_times, nanogpt_train_clock,
                          run_logged)
from throughput import matmul_peak

from lmgolf.config import load_config
from lmgolf.device import cpu_has_fast_bf16
from lmgolf.model.count import count_config
from lmgolf.runinfo import hardware, library_versions

LMGOLF = [sys.executable, "-m", "lmgolf"]
NANOGPT = [sys.executable, "train.py", "config/train_shakespeare_char.py", "--device=cpu", "--compile=False",
           "--dtype=float32", "--log_interval=1"]


def nanogpt_shape_flags(a) -> list[str]:
    return [f"--n_layer={a.n_layer}", f"--n_head={a.n_head}", f"--n_embd={a.d_model}", f"--block_size={a.context}",
            f"--batch_size={a.batch}", f"--max_iters={a.iterations}", f"--lr_decay_iters={a.iterations}",
            f"--dropout={a.dropout}"]


def lmgolf_shape_overrides(a) -> list[str]:
    return [f"model.n_layer={a.n_layer}", f"model.n_head={a.n_head}", f"model.d_model={a.d_model}",
            f"model.context={a.context}", f"model.dropout={a.dropout}", f"train.micro_batch={a.batch}",
            f"train.batch_tokens={a.batch * a.context}", f"train.max_steps={a.iterations}", "train.device=cpu",
            "train.compile=off", "train.log_every=1", "train.eval_every=0"]


def flops_per_token(preset: str, overrides: list[str], vocab: int) -> int:
    cfg = load_config(preset, overrides)
    cfg.model.vocab_size = vocab
    return count_config(cfg.model).train_flops_per_token


def refuse_emulated_bf16(dtype: str) -> None:
    if dtype == "bf16" and not cpu_has_fast_bf16():
        raise SystemExit("--dtype bf16 refused: this CPU has no AMX or AVX512-BF16, torch would emulate bf16 "
                         "matmuls (about 1 GFLOP/s); use --dtype fp32")


def speed(a, work: Path, ng: Path, data: Path, env: dict) -> dict:
    tokens_per_step = a.batch * a.context
    shapes = gemm_shapes(tokens_per_step, a.d_model, 65)
    peaks = {"fp32": {"gemm_shapes": gemm_peak(shapes, torch.float32),
                      f"square_{a.matmul_size}": matmul_peak(torch.device("cpu"), torch.float32, a.matmul_size, 3)}}
    if a.dtype == "bf16":
        peaks["bf16"] = {"gemm_shapes": gemm_peak(shapes, torch.bfloat16),
                         f"square_{a.matmul_size}": matmul_peak(torch.device("cpu"), torch.bfloat16, a.matmul_size, 3)}
    overrides = lmgolf_shape_overrides(a) + [f"train.dtype={a.dtype}"]
    vocab = json.loads((data / "meta.json").read_text())["tokenizer"]["vocab_size"]
    sides = {"nanogpt": {"dtype": "fp32", "flops_per_token": flops_per_token(a.preset, overrides, 65), "runs": []},
             "lmgolf": {"dtype": a.dtype, "flops_per_token": flops_per_token(a.preset, overrides, vocab), "runs": []}}

    def run_nanogpt(i):
        out = work / f"speed-ng-{i}"
        cmd = NANOGPT + nanogpt_shape_flags(a) + ["--eval_interval=1000000000", "--eval_iters=1",
                                                 "--always_save_checkpoint=False", f"--out_dir={out}"]
        info = run_logged(cmd, work / f"speed-ng-{i}.log", out, cwd=ng, env=env)
        times = [s for it, s in nanogpt_step_times((work / f"speed-ng-{i}.log").read_text()) if it >= a.warmup]
        info["tokens_per_s"] = median_rate([tokens_per_step / s for s in times], "nanoGPT")
        return info

    def run_lmgolf(i):
        out = work / f"speed-lm-{i}"
        cmd = LMGOLF + ["train", "--preset", a.preset, "--data", str(data), "--out", str(out)] + overrides
        info = run_logged(cmd, work / f"speed-lm-{i}.log", out, env=env)
        rates = [r for step, r in lmgolf_step_rates((out / "metrics.jsonl").read_text()) if step > a.warmup]
        info["tokens_per_s"] = median_rate(rates, "lmgolf")
        return info

    for i in range(a.pairs):
        order = [("nanogpt", run_nanogpt), ("lmgolf", run_lmgolf)]
        for name, fn in (order if i % 2 == 0 else order[::-1]):
            sides[name]["runs"].append(fn(i))
            print(f"pair {i + 1}/{a.pairs} {name}: {sides[name]['runs'][-1]['tokens_per_s']:,.0f} tokens/s", file=sys.stderr)
    for name, side in sides.items():
        side["tokens_per_s_median"] = statistics.median(r["tokens_per_s"] for r in side["runs"])
        side["flops_per_s"] = side["tokens_per_s_median"] * side["flops_per_token"]
        side["share_of_peak"] = {k: side["flops_per_s"] / v for k, v in peaks[side["dtype"]].items()}
        side["max_rss_bytes"] = max(r["max_rss_bytes"] for r in side["runs"])
    ratios = [lm["tokens_per_s"] / ng_["tokens_per_s"] for lm, ng_ in zip(sides["lmgolf"]["runs"], sides["nanogpt"]["runs"])]
    result = {"mode": "speed", "shape": {"n_layer": a.n_layer, "d_model": a.d_model, "n_head": a.n_head,
                                         "context": a.context, "batch": a.batch}, "iterations": a.iterations,
              "warmup_steps_excluded": a.warmup, "pairs": a.pairs, "threads": a.threads, "matmul_peak_flops_per_s": peaks,
              "gemm_shapes": shapes, "sides": sides, "ratio_per_pair": ratios, "ratio_median": statistics.median(ratios),
              "ratio_min": min(ratios), "ratio_max": max(ratios)}
    for name, side in sides.items():
        shares = ", ".join(f"{v:.0%} of {k}" for k, v in side["share_of_peak"].items())
        print(f"{name:8} ({side['dtype']}): {side['tokens_per_s_median']:,.0f} tokens/s, "
              f"{side['flops_per_s'] / 1e9:.1f} GFLOP/s = {shares} peak ({side['dtype']}), "
              f"peak RSS {side['max_rss_bytes'] / 2**20:,.0f} MiB")
    print(f"lmgolf / nanoGPT tokens/s: {result['ratio_median']:.2f}x (min {min(ratios):.2f}, max {max(ratios):.2f}, "
          f"{a.pairs} pairs); fp32 matmul peak {peaks['fp32']['gemm_shapes'] / 1e9:.1f} GFLOP/s at the model's shapes")
    return result


def quality(a, work: Path, ng: Path, data: Path, env: dict, text: str) -> dict:
    rows = []
    for seed in range(a.seed, a.seed + a.seeds):
        ng_out = work / f"quality-ng-{seed}"
        ng_log = work / f"quality-ng-{seed}.log"
        eval_interval = 250 if a.iterations % 250 == 0 else a.iterations  # a checkpoint at the last iteration
        cmd = NANOGPT + ["--eval_iters=20", "--block_size=64", "--batch_size=12", "--n_layer=4", "--n_head=4",
                         "--n_embd=128", f"--max_iters={a.iterations}", f"--lr_decay_iters={a.iterations}",
                         "--dropout=0.0", f"--eval_interval={eval_interval}", "--always_save_checkpoint=True",
                         f"--seed={seed}", f"--out_dir={ng_out}"]
        ng_run = run_logged(cmd, ng_log, ng_out, cwd=ng, env=env)
        ng_run["train_clock_s"] = nanogpt_train_clock(nanogpt_step_times(ng_log.read_text()), eval_interval, a.iterations)
        lm_out = work / f"quality-lm-{seed}"
        budget = ([f"train.max_steps={a.iterations}"] if a.equal == "iterations"
                  else ["train.max_steps=0", f"train.time_budget={ng_run['train_clock_s']:.1f}"])
        cmd = LMGOLF + ["train", "--preset", a.preset, "--data", str(data), "--out", str(lm_out),
                        f"train.seed={seed}"] + budget
        lm_run = run_logged(cmd, work / f"quality-lm-{seed}.log", lm_out, env=env)
        lm_run.update(json.loads((lm_out / "summary.json").read_text()))
        ng_fn, ng_ids, ng_ctx = nanogpt_scorer(ng_out / "ckpt.pt", ng, text)
        lm_fn, lm_ids, lm_ctx = lmgolf_scorer(lm_out, text)
        if a.score_context and a.score_context > min(ng_ctx, lm_ctx):
            raise SystemExit(f"--score-context {a.score_context} is longer than a model's context ({ng_ctx}, {lm_ctx})")
        ng_run["score_context"], lm_run["score_context"] = a.score_context or ng_ctx, a.score_context or lm_ctx
        ng_run["full_val_loss"], targets = full_val_loss(ng_fn, ng_ids, ng_run["score_context"])
        lm_run["full_val_loss"], lm_targets = full_val_loss(lm_fn, lm_ids, lm_run["score_context"])
        assert targets == lm_targets, "both sides must score the same characters"
        rows.append({"seed": seed, "targets": targets, "nanogpt": ng_run, "lmgolf": lm_run})
        print(f"seed {seed}: nanoGPT {ng_run['full_val_loss']:.4f}, lmgolf {lm_run['full_val_loss']:.4f} nats/char "
              f"({targets:,} targets)", file=sys.stderr)
    ng_losses = [r["nanogpt"]["full_val_loss"] for r in rows]
    lm_losses = [r["lmgolf"]["full_val_loss"] for r in rows]
    sd = (lambda xs: statistics.stdev(xs) if len(xs) > 1 else 0.0)
    print(f"| seed | nanoGPT (full val) | lmgolf {a.preset} (full val) | lmgolf - nanoGPT |\n| --- | ---: | ---: | ---: |")
    for r, n, m in zip(rows, ng_losses, lm_losses):
        print(f"| {r['seed']} | {n:.4f} | {m:.4f} | {m - n:+.4f} |")
    print(f"| mean (sd) | {statistics.mean(ng_losses):.4f} ({sd(ng_losses):.4f}) | {statistics.mean(lm_losses):.4f} "
          f"({sd(lm_losses):.4f}) | {statistics.mean(lm_losses) - statistics.mean(ng_losses):+.4f} |")
    walls = "; ".join(f"seed {r['seed']}: nanoGPT {r['nanogpt']['wall_s']:.0f} s (train clock "
                      f"{r['nanogpt']['train_clock_s']:.0f}), lmgolf {r['lmgolf']['wall_s']:.0f} s (train clock "
                      f"{r['lmgolf']['elapsed']:.0f}, {r['lmgolf']['steps']} steps)" for r in rows)
    print(f"wall time: {walls}")
    return {"mode": "quality", "equal": a.equal, "preset": a.preset, "iterations": a.iterations, "threads": a.threads,
            "rows": rows, "nanogpt_mean": statistics.mean(ng_losses), "lmgolf_mean": statistics.mean(lm_losses),
            "nanogpt_sd": sd(ng_losses), "lmgolf_sd": sd(lm_losses),
            "lmgolf_mean_bits_per_char": statistics.mean(lm_losses) / math.log(2)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("mode", choices=["speed", "quality"])
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/vs-nanogpt-MODE.json)")
    p.add_argument("--threads", type=int, default=int(os.environ.get("OMP_NUM_THREADS", torch.get_num_threads())))
    p.add_argument("--input", type=Path, default=REPO.parent / "shared" / "data" / "tinyshakespeare" / "input.txt",
                   help="Tiny Shakespeare's input.txt, in a folder named tinyshakespeare")
    p.add_argument("--work", type=Path, default=None, help="scratch folder to keep (default: a temporary one, removed)")
    p.add_argument("--preset", default=None, help="lmgolf preset (default: nanogpt-shakespeare-char for speed, "
                                                   "nanogpt-shakespeare-char-cpu for quality)")
    p.add_argument("--iterations", type=int, default=None, help="default: 50 (speed), 2000 (quality)")
    g = p.add_argument_group("speed")
    g.add_argument("--pairs", type=int, default=3)
    g.add_argument("--n-layer", type=int, default=6)
    g.add_argument("--d-model", type=int, default=384)
    g.add_argument("--n-head", type=int, default=6)
    g.add_argument("--context", type=int, default=256)
    g.add_argument("--batch", type=int, default=64, help="sequences per step")
    g.add_argument("--dropout", type=float, default=0.0)
    g.add_argument("--dtype", choices=["fp32", "bf16"], default="fp32", help="lmgolf's dtype (nanoGPT: fp32 on CPU)")
    g.add_argument("--warmup", type=int, default=5, help="first steps of each run left out of its median")
    g.add_argument("--matmul-size", type=int, default=2048, help="square matmul for the second peak figure")
    g = p.add_argument_group("quality")
    g.add_argument("--seeds", type=int, default=3)
    g.add_argument("--seed", type=int, default=1337, help="first seed")
    g.add_argument("--equal", choices=["iterations", "wallclock"], default="iterations")
    g.add_argument("--score-context", type=int, default=None, help="scoring windows for both (default: each model's own context)")
    a = p.parse_args()
    a.preset = a.preset or ("nanogpt-shakespeare-char" if a.mode == "speed" else "nanogpt-shakespeare-char-cpu")
    a.iterations = a.iterations or (50 if a.mode == "speed" else 2000)
    if a.mode == "speed":
        refuse_emulated_bf16(a.dtype)  # before any work
    torch.set_num_threads(a.threads)
    env = {**os.environ, "OMP_NUM_THREADS": str(a.threads), "PYTHONUNBUFFERED": "1",
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    work = a.work or Path(tempfile.mkdtemp(prefix="vs-nanogpt-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        text = a.input.read_text()
        ng = work / "nanogpt" if (work / "nanogpt" / "train.py").is_file() else copy_nanogpt(work / "nanogpt", a.input)
        data = work / "ts-char"
        if not (data / "meta.json").is_file():
            from lmgolf.data.prepare import prepare_data
            prepare_data("tinyshakespeare", "char", data, data_dir=a.input.parent.parent, progress=False)
        result = speed(a, work, ng, data, env) if a.mode == "speed" else quality(a, work, ng, data, env, text)
    finally:
        if a.work is None:
            shutil.rmtree(work, ignore_errors=True)
    result.update(hardware=hardware(), libraries=library_versions(), command=sys.argv)
    out = Path(a.out or f"bench/results/vs-nanogpt-{a.mode}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
