"""Times a preset's training step on this machine: tokens/s, achieved FLOP/s, and its share of the
machine's measured matmul FLOP/s, plus memory. Writes a JSON file.

    python bench/throughput.py --preset cpu-demo
    python bench/throughput.py --preset pg-baseline --device cuda --micro-batch 64 --steps 20
    python bench/throughput.py --preset nanogpt-shakespeare-char --dtype bf16 --profile 3 model.dropout=0

--profile N runs N more steps under torch.profiler and prints where the time goes: forward, backward and
optimizer phases, the top operators by self time, and the share of casts, matmuls, attention and the rest.

Random tokens stand in for data (the step time does not depend on their values). Each repeat times
`--steps` optimizer steps after `--warmup` untimed ones; the figures are medians over repeats.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lmgolf.allocator import apply_cpu_malloc
from lmgolf.config import load_config
from lmgolf.model.count import count_module
from lmgolf.device import autocast, cpu_fields, pick_device, pick_dtype, want_compile
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


def theoretical_peak(dtype, cpuinfo: str | None = None, threads: int | None = None) -> dict | None:
    """The CPU's nominal peak FLOP/s in this dtype: threads x clock (cpu MHz of /proc/cpuinfo) x FLOPs per
    cycle per core from its ISA. An estimate from public microarchitecture figures, not a measurement:
    fp32 with AVX-512 on Intel and on AMD from Zen 5 (cpu family 26, full-width 512-bit pipes): 2 FMA units x
    16 lanes x 2 = 64; AVX-512 on Zen 4 (two 256-bit pipes) and AVX2: 32; bf16 with AMX: 1024 (one 16x16x32
    tile multiply per 16 cycles); AVX512-BF16: twice fp32.
    None where bf16 is emulated or the clock is unknown."""
    fields = cpu_fields(cpuinfo)
    flags, vendor, mhz = set(fields.get("flags", "").split()), fields.get("vendor_id", ""), fields.get("cpu MHz")
    if not mhz:
        return None
    family = fields.get("cpu family", "")
    full_width = vendor == "GenuineIntel" or (vendor == "AuthenticAMD" and family.isdigit() and int(family) >= 26)
    wide = 64 if "avx512f" in flags and full_width else 32 if flags & {"avx2", "avx512f"} else 16
    if dtype == torch.bfloat16:
        per_cycle = 1024 if "amx_bf16" in flags else 2 * wide if "avx512_bf16" in flags else None
        if per_cycle is None:
            return None
    else:
        per_cycle = wide
    threads = threads or min(len(os.sched_getaffinity(0)), torch.get_num_threads())
    return {"flops_per_s": threads * float(mhz) * 1e6 * per_cycle, "cores": threads, "mhz": float(mhz),
            "flops_per_cycle_per_core": per_cycle}


def profile_steps(step, steps: int, top: int = 15) -> dict:
    """Where a training step's CPU time goes, from torch.profiler over `steps` steps."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    phases = {e.key: e.cpu_time_total / total for e in events if e.key in ("forward", "backward", "optimizer")}

    def kind(name: str) -> str:
        if "attention" in name:
            return "attention"
        if any(k in name for k in ("mm", "linear", "matmul", "mkldnn")):
            return "matmul"
        if any(k in name for k in ("copy_", "_to_copy", "aten::to")):
            return "casts and copies"
        if any(k in name for k in ("norm", "rms")):
            return "normalization"
        return "other"
    kinds: dict[str, float] = {}
    for e in events:
        k = kind(e.key)
        kinds[k] = kinds.get(k, 0.0) + e.self_cpu_time_total / total
    ops = sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]
    return {"steps": steps, "self_cpu_ms_per_step": total / 1000 / steps, "phase_share": phases,
            "kind_share": dict(sorted(kinds.items(), key=lambda kv: -kv[1])),
            "top_ops": [{"op": e.key, "calls_per_step": e.count / steps, "self_share": e.self_cpu_time_total / total,
                         "self_ms_per_step": e.self_cpu_time_total / 1000 / steps} for e in ops]}


def time_steps(preset: str, overrides: list[str], device, dtype, micro_batch: int | None, steps: int, warmup: int,
               repeats: int, compile_choice: str, profile: int = 0) -> dict:
    cfg = load_config(preset, overrides)
    torch.manual_seed(0)
    model = GPT(cfg.model).to(device)
    optimizers = build_optimizers(model, cfg.train, ns_dtype=dtype)
    net = torch.compile(model) if want_compile(compile_choice, device) else model
    batch = micro_batch or cfg.train.micro_batch
    x = torch.randint(0, cfg.model.vocab_size, (batch, cfg.model.context + 1), device=device)

    def step():
        with torch.profiler.record_function("forward"):
            with autocast(device, dtype):
                logits = net(x[:, :-1])
            loss = F.cross_entropy(logits.view(-1, logits.size(-1)), x[:, 1:].reshape(-1))
        with torch.profiler.record_function("backward"):
            loss.backward()
        with torch.profiler.record_function("optimizer"):
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
    profiled = {"profile": profile_steps(step, profile)} if profile else {}
    return {**profiled, "preset": preset, "overrides": overrides, "params": count.params, "micro_batch": batch,
            "context": cfg.model.context, "tokens_per_step": tokens, "flops_per_token": count.train_flops_per_token,
            "step_seconds_median": step_s, "step_seconds_all": times, "tokens_per_s": tokens / step_s,
            "flops_per_s": tokens / step_s * count.train_flops_per_token}


def peak_memory(device) -> dict:
    if device.type == "cuda":
        return {"cuda_max_allocated_bytes": torch.cuda.max_memory_allocated(device)}
    return {"max_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}


def print_profile(prof: dict) -> None:
    print(f"profile: {prof['self_cpu_ms_per_step']:.1f} ms of CPU time a step; phases "
          + ", ".join(f"{k} {v:.0%}" for k, v in prof["phase_share"].items()) + "; kinds "
          + ", ".join(f"{k} {v:.0%}" for k, v in prof["kind_share"].items()), file=sys.stderr)
    for op in prof["top_ops"]:
        print(f"  {op['self_share']:6.1%} {op['self_ms_per_step']:8.1f} ms {op['calls_per_step']:6.0f} calls  {op['op']}",
              file=sys.stderr)


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
    p.add_argument("--malloc", default="reuse", choices=["reuse", "system"], help="as train.cpu_malloc")
    p.add_argument("--profile", type=int, default=0, metavar="N", help="profile N more steps (torch.profiler)")
    p.add_argument("--out", default=None, help="JSON path (default: bench/results/throughput-PRESET-DEVICE.json)")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()
    device = pick_device(args.device)
    dtype = pick_dtype(args.dtype, device)
    kept = apply_cpu_malloc(args.malloc, device.type)
    n = args.matmul_size or (8192 if device.type == "cuda" else 1024)
    peak = matmul_peak(device, dtype, n)
    result = time_steps(args.preset, args.overrides, device, dtype, args.micro_batch, args.steps, args.warmup,
                        args.repeats, args.compile, args.profile)
    theory = theoretical_peak(dtype) if device.type == "cpu" else None
    result.update(device=str(device), dtype=str(dtype).removeprefix("torch."), matmul_peak_flops_per_s=peak,
                  matmul_size=n, mfu=result["flops_per_s"] / peak, theoretical_peak=theory, kept_freed_memory=kept,
                  share_of_theoretical_peak=result["flops_per_s"] / theory["flops_per_s"] if theory else None,
                  hardware=hardware(), libraries=library_versions(), **peak_memory(device))
    out = Path(args.out or f"bench/results/throughput-{args.preset}-{device.type}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{args.preset} on {device} ({result['dtype']}): {result['tokens_per_s']:,.0f} tokens/s, "
          f"step {result['step_seconds_median'] * 1000:.1f} ms, {result['flops_per_s'] / 1e12:.3f} TFLOP/s achieved "
          f"= {result['mfu']:.1%} of measured matmul peak {peak / 1e12:.3f} TFLOP/s"
          + (f", {result['share_of_theoretical_peak']:.1%} of the nominal peak {theory['flops_per_s'] / 1e12:.3f}"
             if theory else "") + f"; wrote {out}", file=sys.stderr)
    if "profile" in result:
        print_profile(result["profile"])
    print(json.dumps({k: result[k] for k in ("tokens_per_s", "flops_per_s", "mfu", "step_seconds_median")}))


if __name__ == "__main__":
    main()
