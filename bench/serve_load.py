"""Load test of `lmgolf serve`: N concurrent streaming clients for S seconds on loopback. Not a timed test.

    python bench/serve_load.py                          # 32 clients, 60 s, a cpu-demo model trained briefly
    python bench/serve_load.py --clients 32 --seconds 20 --run runs/demo --out bench-serve.json

The model: `--run` (a run folder or artifact), else the cpu-demo preset (4 layers x 256, context 128,
bytes) trained for `--train-seconds` on tinyshakespeare from $LMGOLF_DATA_DIR into --work (decoding cost
does not depend on how well it is trained; torch.compile off). The server runs as its own process (`python -m lmgolf serve`,
--device cpu unless told), so the clients do not share its interpreter. Each client loops: one streaming
/v1/completions request (a prompt from a small list, max_tokens --max-tokens, temperature 0.8), then the
next, until the time is up; requests still open then are ended.

Reported: errors (non-200 answers, broken streams, error events), starved clients (no token at all, or a gap
between tokens longer than --starve-seconds), time to first token p50/p99, tokens/s in total (the server's
tokens reaching the clients), requests completed, and the server's peak RSS (VmHWM) with its RSS at start.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

PROMPTS = ["The king", "ROMEO:\n", "First Citizen:\nBefore we proceed", "What light through yonder",
           "To be, or not", "My lord, ", "O, ", "Enter the Duke"]


def percentile(values: list[float], q: float) -> float | None:
    if not values:
        return None
    values = sorted(values)
    return values[min(len(values) - 1, round(q * (len(values) - 1)))]


def train_demo(work: Path, seconds: float) -> Path:
    from lmgolf import api
    from lmgolf.data.prepare import prepare_data
    data, run = work / "data", work / "run"
    if not data.exists():
        prepare_data("tinyshakespeare", "byte", data, data_dir=os.environ.get("LMGOLF_DATA_DIR"), progress=False)
    if not (run / "summary.json").exists():
        api.train(run, preset="cpu-demo", data=data, overrides=["train.compile=off"], time_budget=seconds,
                  progress=False)
    return run


def memory_kb(pid: int) -> dict:
    fields = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            fields[key] = int(value.split()[0])
    return fields


async def client(http: httpx.AsyncClient, index: int, until: float, args, stats: dict) -> None:
    last_token, tokens, n = None, 0, 0
    while time.monotonic() < until:
        body = {"prompt": PROMPTS[(index + n) % len(PROMPTS)], "max_tokens": args.max_tokens, "temperature": 0.8,
                "stream": True, "seed": index * 1000 + n}
        n += 1
        sent, first = time.monotonic(), None
        try:
            async with http.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code != 200:
                    stats["errors"].append(f"HTTP {r.status_code}: {(await r.aread())[:200]!r}")
                    await asyncio.sleep(0.1)
                    continue
                done = False
                async for line in r.aiter_lines():
                    if not line.startswith("data: "):
                        continue
                    if line == "data: [DONE]":
                        done = True
                        break
                    chunk = json.loads(line[6:])
                    if "error" in chunk:
                        stats["errors"].append(chunk["error"]["message"])
                        break
                    if chunk["choices"][0]["finish_reason"] is None:
                        now = time.monotonic()
                        if first is None:
                            first = now
                            stats["ttft"].append(now - sent)
                        if last_token is not None:
                            gap = stats["max_gap_per_client"][index]
                            stats["max_gap_per_client"][index] = max(gap, now - last_token)
                        last_token, tokens = now, tokens + 1
                        if now >= until:
                            break
                if done:
                    stats["requests"] += 1
        except httpx.HTTPError as e:
            stats["errors"].append(f"{type(e).__name__}: {e}")
        last_token = None  # the gap between requests is the client's own
    stats["tokens_per_client"][index] = tokens


async def sample_memory(pid: int, until: float, every: float, out: list) -> None:
    """The server's RSS (MiB) every `every` seconds: flat at the end means memory is bounded."""
    while time.monotonic() < until:
        out.append(round(memory_kb(pid)["VmRSS"] / 1024, 1))
        await asyncio.sleep(every)


async def load(url: str, pid: int, args) -> dict:
    stats = {"errors": [], "ttft": [], "requests": 0, "tokens_per_client": [0] * args.clients,
             "max_gap_per_client": [0.0] * args.clients, "rss": []}
    limits = httpx.Limits(max_connections=args.clients + 4, max_keepalive_connections=args.clients + 4)
    async with httpx.AsyncClient(base_url=url, timeout=httpx.Timeout(60.0), limits=limits) as http:
        start = time.monotonic()
        until = start + args.seconds
        await asyncio.gather(sample_memory(pid, until, max(args.seconds / 10, 1.0), stats["rss"]),
                             *(client(http, i, until, args, stats) for i in range(args.clients)))
        stats["elapsed"] = time.monotonic() - start
    return stats


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=32)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--max-tokens", type=int, default=64)
    p.add_argument("--run", default=None, help="serve this run folder or artifact instead of training cpu-demo")
    p.add_argument("--work", default=None, help="where the demo data and run go (default: a temporary folder)")
    p.add_argument("--train-seconds", type=float, default=60)
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=1, help="the server's OMP_NUM_THREADS: on a CPU, a model this "
                   "small decodes faster on one thread than on several contended ones")
    p.add_argument("--port", type=int, default=8765)
    p.add_argument("--starve-seconds", type=float, default=5.0)
    p.add_argument("--out", default="bench-serve-load.json")
    args = p.parse_args(argv)

    work = Path(args.work or tempfile.mkdtemp(prefix="lmgolf-serve-load-"))
    target = Path(args.run) if args.run else train_demo(work, args.train_seconds)
    log = open(work / "server.log", "w")
    server = subprocess.Popen([sys.executable, "-m", "lmgolf", "serve", str(target), "--port", str(args.port),
                               "--device", args.device, "--max-streams", str(args.clients)],
                              stdout=log, stderr=subprocess.STDOUT,
                              env={**os.environ, "OMP_NUM_THREADS": str(args.threads)})
    url = f"http://127.0.0.1:{args.port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                card = httpx.get(url + "/v1/card", timeout=2).json()
                break
            except httpx.HTTPError:
                if server.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"the server did not start: {(work / 'server.log').read_text()[-2000:]}")
                time.sleep(0.3)
        at_start = memory_kb(server.pid)
        stats = asyncio.run(load(url, server.pid, args))
        memory = memory_kb(server.pid)
    finally:
        server.terminate()
        server.wait(timeout=30)
        log.close()

    per_client = stats["tokens_per_client"]
    gaps = stats["max_gap_per_client"]
    starved = sum(1 for t, gap in zip(per_client, gaps) if t == 0 or gap > args.starve_seconds)
    result = {
        "clients": args.clients, "seconds": args.seconds, "max_tokens": args.max_tokens, "device": args.device,
        "server_threads": args.threads,
        "model": {k: card.get(k) for k in ("name", "preset", "parameters", "val_bpb", "shape")},
        "errors": len(stats["errors"]), "error_samples": stats["errors"][:5],
        "starved_clients": starved, "starve_seconds": args.starve_seconds, "max_token_gap_s": max(gaps),
        "requests_completed": stats["requests"],
        "ttft_p50_s": percentile(stats["ttft"], 0.5), "ttft_p99_s": percentile(stats["ttft"], 0.99),
        "tokens_total": sum(per_client), "tokens_per_s": sum(per_client) / stats["elapsed"],
        "tokens_per_client_min": min(per_client), "tokens_per_client_max": max(per_client),
        "server_rss_start_mib": at_start["VmRSS"] / 1024, "server_rss_end_mib": memory["VmRSS"] / 1024,
        "server_peak_rss_mib": memory["VmHWM"] / 1024, "server_rss_mib_every_tenth": stats["rss"],
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
    }
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))
    return 0 if result["errors"] == 0 and starved == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
