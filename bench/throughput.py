"""Times a preset's training step on this machine: tokens/s, achieved FLOP/s, and its share of the
machine's measured matmul FLOP/s, plus memory. Writes a JSON file.

    python bench/throughput.py --preset cpu-demo
    python bench/throughput.py --preset pg-baseline --device cuda --micro-batch 64 --steps 20

Random tokens stand in for data (the step time does not depend on their values). Each repeat times
`--steps` optimizer steps after `--warmup` untimed ones; the figures are medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmgolf.config import load_config
from lmgolf.model.count import count_module
from lmgolf.device import autocast, pick_device, pick_dtype, want_compile
from lmgolf.model.gpt import GPT
from lmgolf.training.optim import build_optimizers
from lmgolf.runinfo import hardware, library_versions


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def matmul_peak(device, dtype, n: int, repeats: int = 5) -> float:
    """Median FLOP/s of an n x n matmul in the training dtype: the machine's practical peak."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    rates = []
    for _ in range(repeats):
        iters = 10
        sync(device)
        t = time.perf_counter()
        for _ in range(iters):
            a @ b
        sync(device)
        rates.append(2 * n**3 * iters / (time.perf_counter() - t))
    return statistics.median(rates)


def time_steps(preset: str, overrides: list[str], device, dtype, micro_batch: int | None, steps: int, warmup: int,
               repeats: int, compile_choice: str) -> dict:
    cfg = load_config(preset, overrides)
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    optimizers = build_optimizers(model, cfg.train, ns_dtype=dtype)
    net = torch.compile(model) if want_compile(compile_choice, device) else model
    batch = micro_batch or cfg.train.micro_batch
    x = torch.randint(0, cfg.model.vocab_size, (batch, cfg.model.context + 1), device=device)

    def step():
        with autocast(device, dtype):
            logits = net(x[:, :-1])
        loss = F.cross_entropy(logits.view(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        loss.backward()
        for opt in optimizers:
            opt.step()
        model.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    times = []
    for _ in range(repeats):
        sync(device)
        t = time.perf_counter()
        for _ in range(steps):
            step()
        sync(device)
        times.append((time.perf_counter() - t) / steps)
    count = count_module(model)
    tokens = batch * cfg.model.context
    step_s = statistics.median(times)
    return {"preset": preset, "overrides": overrides, "params": count.params, "micro_batch": batch,
            "context": cfg.model.context, "tokens_per_step": tokens, "flops_per_token": count.train_flops_per_token,
            "step_seconds_median": step_s, "step_seconds_all": times, "tokens_per_s": tokens / step_s,
            "flops_per_s": tokens / step_s * count.train_flops_per_token}


def peak_memory(device) -> dict:
    if device.type == "cuda":
        return {"cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device)}
    return {"max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default="cpu-demo")
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto", choices=["auto", "bf16", "fp32"])
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--micro-batch", type=int, default=None)
    p.add_argument("--steps", type=int, default=5)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--matmul-size", type=int, default=None, help="default: 1024 on CPU, 8192 on CUDA")
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/throughput-PRESET-DEVICE.json)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    n = args.matmul_size or (8192 if device.type == "cuda" else 1024)
    peak = matmul_peak(device, dtype, n)
    result = time_steps(args.preset, args.overrides, device, dtype, args.micro_batch, args.steps, args.warmup,
                        args.repeats, args.compile)
    result.update(device=str(device), dtype=str(dtype).removeprefix("torch."), matmul_peak_flops_per_s=peak,
                  matmul_size=n, mfu=result["flops_per_s"] / peak, hardware=hardware(), libraries=library_versions(),
                  **peak_memory(device))
    out = Path(args.out or f"bench/results/throughput-{args.preset}-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.preset} on {device} ({result['dtype']}): {result['tokens_per_s']:,.0f} tokens/s, "
          f"step {result['step_seconds_median'] * 1000:.1f} ms, {result['flops_per_s'] / 1e12:.3f} TFLOP/s achieved "
          f"= {result['mfu']:.1%} of measured matmul peak {peak / 1e12:.3f} TFLOP/s; wrote {out}", file=sys.stderr)
    print(json.dumps({k: result[k] for k in ("tokens_per_s", "flops_per_s", "mfu", "step_seconds_median")}))


if __name__ == "__main__":
    main()
