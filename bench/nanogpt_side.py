"""The parts of bench/vs_nanogpt.py that do not decide anything: nanoGPT's scratch copy, running a side with
its peak memory, reading each side's own step timings, and ONE scorer for both sides' models.

nanoGPT is copied from ../shared/anchors/nanoGPT into a temporary folder, never into the repo; the one
change made to the copy is a `seed` config key in place of its hard-coded 1337 in `torch.manual_seed`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parent.parent
ANCHOR = REPO.parent / "shared" / "anchors" / "nanoGPT"
NANOGPT_ITER = re.compile(r"^iter (\d+): loss ([-+\d.einfa]+), time ([\d.]+)ms", re.MULTILINE)


def val_text(text: str) -> str:
    """The validation split of both sides: the last 10% of the characters (nanoGPT's prepare.py cut,
    and lmgolf's tinyshakespeare corpus makes the same)."""
    return text[int(len(text) * 0.9):]


def seeded_train_py(src: str, where: Path) -> str:
    """nanoGPT's train.py with a `seed` config key (default 1337) in place of the 1337 in torch.manual_seed."""
    seeded = src.replace("torch.manual_seed(1337 + seed_offset)", "torch.manual_seed(seed + seed_offset)")
    seeded = seeded.replace("\nout_dir = 'out'\n", "\nseed = 1337\nout_dir = 'out'\n", 1)
    if seeded.count("seed + seed_offset") != 1 or "\nseed = 1337\n" not in seeded:
        raise SystemExit(f"{where}: the seed patch did not apply (nanoGPT's train.py changed?)")
    return seeded


def copy_nanogpt(dest: Path, input_txt: Path, anchor: Path = ANCHOR) -> Path:
    """A scratch copy of nanoGPT with Tiny Shakespeare prepared and the seed made a config key."""
    if not (anchor / "train.py").is_file():
        raise SystemExit(f"nanoGPT not found: {anchor}/train.py (see ../shared/anchors/README.md)")
    shutil.copytree(anchor, dest)
    train = dest / "train.py"
    train.write_text(seeded_train_py(train.read_text(), train))
    data = dest / "data" / "shakespeare_char"
    shutil.copy(input_txt, data / "input.txt")
    subprocess.run([sys.executable, "prepare.py"], cwd=data, check=True, stdout=subprocess.DEVNULL)
    return dest


def run_logged(cmd: list[str], log: Path, out: Path, cwd: Path | None = None, env: dict | None = None) -> dict:
    """Runs cmd, which writes the folder `out` (removed first: a scratch folder), with its output in `log`;
    returns its wall time and this child's own peak RSS (os.wait4)."""
    shutil.rmtree(out, ignore_errors=True)
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=cwd, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        tail = log.read_text()[-2000:]
        raise SystemExit(f"{' '.join(cmd[:5])} ... failed (exit {proc.returncode}); log {log}:\n{tail}")
    return {"wall_s": wall, "max_rss_bytes": usage.ru_maxrss * 1024}


def nanogpt_step_times(log_text: str) -> list[tuple[int, float]]:
    """(iteration, seconds) from nanoGPT's "iter N: loss X, time Yms" lines."""
    return [(int(m[1]), float(m[3]) / 1000) for m in NANOGPT_ITER.finditer(log_text)]


def nanogpt_train_clock(times: list[tuple[int, float]], eval_interval: int, iterations: int) -> float:
    """Seconds nanoGPT spent on the `iterations` steps its last checkpoint holds (iterations 0 .. iterations - 1),
    its evaluation passes left out: an iteration that evaluated (iter % eval_interval == 0) counts as the median
    of the others, as lmgolf's time budget leaves its own validation out."""
    steps = [(it, s) for it, s in times if it < iterations]
    plain = [s for it, s in steps if it % eval_interval]
    if len(steps) != iterations or not plain:
        raise SystemExit(f"nanoGPT's log holds {len(steps)} of its {iterations} iterations' times")
    typical = statistics.median(plain)
    return sum(s if it % eval_interval else typical for it, s in steps)


def lmgolf_step_rates(metrics_jsonl: str) -> list[tuple[int, float]]:
    """(step, tokens/s) from an lmgolf run's metrics.jsonl training rows."""
    rows = (json.loads(line) for line in metrics_jsonl.splitlines() if line.strip())
    return [(r["step"], r["tok_s"]) for r in rows if "tok_s" in r]


def median_rate(rates: list[float], what: str) -> float:
    if not rates:
        raise SystemExit(f"{what}: no timed steps left after the warmup (raise --iterations)")
    return statistics.median(rates)


@torch.no_grad()
def full_val_loss(logits_fn, ids: torch.Tensor, context: int) -> tuple[float, int]:
    """Mean nats per token over the whole split, and the count of targets: non-overlapping windows,
    inputs ids[s:s+context], targets ids[s+1:s+1+context], s = 0, context, ...: every token after the first
    is scored exactly once."""
    total, count = 0.0, 0
    for s in range(0, len(ids) - 1, context):
        tgt = ids[s + 1:s + 1 + context][None]
        inp = ids[s:s + tgt.shape[1]][None]
        logits = logits_fn(inp).float()
        total += F.cross_entropy(logits.view(-1, logits.size(-1)), tgt.view(-1), reduction="sum").item()
        count += tgt.numel()
    assert count == len(ids) - 1
    return total / count, count


def nanogpt_scorer(ckpt_path: Path, nanogpt_dir: Path, text: str):
    """(logits_fn, val ids, context) of a nanoGPT checkpoint, loaded with its own model.py; characters
    mapped as its prepare.py does (stoi over the sorted characters of the whole text)."""
    sys.path.insert(0, str(nanogpt_dir))
    try:
        from model import GPT, GPTConfig
    finally:
        sys.path.remove(str(nanogpt_dir))
    ckpt = torch.load(ckpt_path, map_location="cpu", weights_only=True)
    model = GPT(GPTConfig(**ckpt["model_args"]))
    model.load_state_dict({k.removeprefix("_orig_mod."): v for k, v in ckpt["model"].items()})
    model.eval()
    stoi = {c: i for i, c in enumerate(sorted(set(text)))}
    ids = torch.tensor([stoi[c] for c in val_text(text)], dtype=torch.long)
    return (lambda x: model(x, x)[0]), ids, ckpt["model_args"]["block_size"]  # with targets: every position's logits


def lmgolf_scorer(run_dir: Path, text: str):
    """(logits_fn, val ids, context) of an lmgolf run folder."""
    from lmgolf.api import load
    loaded = load(run_dir, device="cpu")
    model = loaded.model.eval()
    val = val_text(text)
    ids = torch.tensor(loaded.tokenizer.encode(val), dtype=torch.long)
    if loaded.tokenizer.decode(ids.tolist()) != val:
        raise SystemExit(f"{run_dir}: its tokenizer does not round-trip the val split; a per-character score needs one")
    return (lambda x: model(x)), ids, loaded.cfg.model.context


def gemm_shapes(tokens: int, d_model: int, vocab: int, mlp_mult: float = 4.0) -> list[tuple[int, int, int]]:
    """(M, K, N) of a GPT block's and head's forward matmuls: qkv, attention out, MLP up and down, head."""
    hidden = int(mlp_mult * d_model)
    return [(tokens, d_model, 3 * d_model), (tokens, d_model, d_model), (tokens, d_model, hidden),
            (tokens, hidden, d_model), (tokens, d_model, vocab)]


def gemm_peak(shapes: list[tuple[int, int, int]], dtype: torch.dtype, repeats: int = 10, passes: int = 3) -> float:
    """The best FLOP/s over `repeats` timings of `passes` passes over `shapes` (x @ w, both in `dtype`): the
    measured peak at the model's shapes. The best, not the median: a ceiling that a short or cold median
    reads too low (training reached 130% of a 3-repeat median)."""
    pairs = [(torch.randn(m, k, dtype=dtype), torch.randn(k, n, dtype=dtype)) for m, k, n in shapes]
    flops = passes * sum(2 * m * k * n for m, k, n in shapes)
    for a, b in pairs:
        a @ b
    rates = []
    for _ in range(repeats):
        t = time.perf_counter()
        for _ in range(passes):
            for a, b in pairs:
                a @ b
        rates.append(flops / (time.perf_counter() - t))
    return max(rates)
