"""Training: a budget of wall-clock seconds or steps, gradient accumulation, Muon or AdamW, DDP under torchrun.

Elapsed training time counts only the training steps (not compilation, evaluation or checkpoints);
it is saved in checkpoints, and rank 0's progress (and, for train.warmdown_steps under a time budget, its
mean step time) decides, on every rank, the learning rate, when QAT
switches on (train.qat: lmgolf.training.qat, from qat_start or qat_lr_scale), when the weight averages
(lmgolf.training.averaging) start and when the budget is spent.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import time
from pathlib import Path
from typing import Callable

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from lmgolf.training.checkpoint import CHECKPOINT_DIR, check_out_folder, restore_training, save_checkpoint
from lmgolf.config import Config
from lmgolf.model.count import count_module
from lmgolf.data.folder import DataFolder
from lmgolf.device import Dist, autocast, close_distributed, init_distributed, pick_device, pick_dtype, want_compile
from lmgolf.errors import LmgolfError
from lmgolf.eval.evaluate import evaluate
from lmgolf.data.loader import WindowSampler
from lmgolf.model.gpt import GPT
from lmgolf.training.averaging import WeightAverages
from lmgolf.training.distill import distill_loss, load_teacher
from lmgolf.training.memory import check_training_memory
from lmgolf.training.optim import (build_optimizers, lr_multiplier, muon_momentum, set_lr, set_momentum,
                                   warmdown_fraction)
from lmgolf.progress import MetricsLog, progress_bar
from lmgolf.training.qat import QAT, qat_due
from lmgolf.training.schedules import StepSchedule
from lmgolf.training.doc_scores import curriculum_order
from lmgolf.training.tensorboard import metrics_log
from lmgolf.training.resume import finished_at, check_resume
from lmgolf.training.runlock import run_folder_lock
from lmgolf.runfiles import atomic_write_text
from lmgolf.allocator import apply_cpu_malloc
from lmgolf.runinfo import run_record


def budget_progress(cfg: Config, step: int, elapsed: float) -> float:
    t = cfg.train
    fractions = []
    if t.max_steps:
        fractions.append(step / t.max_steps)
    if t.time_budget:
        fractions.append(elapsed / t.time_budget)
    return max(fractions)


def train(cfg: Config, data_dir: str | Path, out_dir: str | Path, resume: bool = False, progress: bool = True,
          on_step: Callable[[int], None] | None = None) -> dict:
    """Trains into out_dir and returns a summary (final validation, steps, tokens, seconds). Rank 0 holds the
    run folder's lock throughout (lmgolf.training.runlock): one process trains into a folder at a time."""
    with contextlib.ExitStack() as held:  # the lock, from when _train takes it to the end
        return _train(cfg, data_dir, Path(out_dir), resume, progress, on_step, held)


def _train(cfg: Config, data_dir: str | Path, out_dir: Path, resume: bool, progress: bool,
           on_step: Callable[[int], None] | None, held: contextlib.ExitStack) -> dict:
    if not cfg.train.max_steps and not cfg.train.time_budget:
        raise LmgolfError("config fields train.max_steps and train.time_budget: set at least one budget")
    ddp = init_distributed(cfg.train.device)
    device = pick_device(cfg.train.device)
    dtype = pick_dtype(cfg.train.dtype, device)
    kept_freed_memory = apply_cpu_malloc(cfg.train.cpu_malloc, device.type)
    data = DataFolder(data_dir)
    data.check()  # tokenizer, checksums, token ids and counts: refused before anything is written
    cfg.model.vocab_size = data.vocab_size
    cfg.model.bos_id = data.bos_id
    cfg.validate()
    check_out_folder(out_dir, resume)  # a fresh run only into an empty folder or a run's without checkpoint
    changes = check_resume(out_dir, cfg, data) if resume else {}  # refuses before anything is written
    schedule = StepSchedule(cfg, ddp.world_size)  # the batch plan of every length and batch phase, checked up front
    check_training_memory(cfg.model, device)  # a model that cannot fit is refused before it is built
    started = _now(device) if cfg.train.curriculum != "none" else 0.0
    order = curriculum_order(cfg, data, device, dtype, ddp.rank, ddp.world_size)  # None: uniform sampling throughout
    scoring_seconds = _now(device) - started if order is not None else 0.0
    teacher = (load_teacher(cfg.train.teacher, data.tokenizer(), cfg.model.context, device, dtype)  # before the seed:
               if cfg.train.teacher else None)  # loading it leaves the student's initialization as it is
    if ddp.is_main:  # every refusal is behind: from the first write on, this process is the folder's one writer
        held.enter_context(run_folder_lock(out_dir))
        check_out_folder(out_dir, resume)  # again, under the lock: another run may have begun there since

    torch.manual_seed(cfg.train.seed)
    model = GPT(cfg.model).to(device)
    optimizers = build_optimizers(model, cfg.train, ns_dtype=torch.bfloat16 if dtype == torch.bfloat16 else torch.float32)
    averages = WeightAverages(model, cfg.train)  # EMA and SWA, fp32 on the device; the same on every rank
    step, elapsed, qat_step, tokens = 0, 0.0, None, 0  # qat_step: optimizer steps taken before QAT switched on
    if resume:
        state = restore_training(out_dir, model, optimizers, averages=averages)
        step, elapsed = state["step"], state["elapsed"]
        qat_step = state.get("extra", {}).get("qat_step")
        tokens = state.get("extra", {}).get("tokens", step * schedule.plan_at(0.0).tokens)  # older checkpoints: none
        if type(tokens) is not int or tokens < 0:
            raise LmgolfError(f"{out_dir / CHECKPOINT_DIR / 'state.json'}: field extra.tokens is not a token count")
        if qat_step is not None and not qat_due(budget_progress(cfg, step, elapsed), cfg.train):
            qat_step = None  # a raised budget moved QAT's start later: it switches on again there
        if ddp.is_main and changes:
            cfg.save(out_dir / "config.json")
    elif ddp.is_main:
        _write_run_folder(out_dir, cfg, data, ddp, device, dtype, kept_freed_memory)
    log = metrics_log(out_dir, ddp.is_main, cfg.train.tensorboard, step if resume else None)  # RUN/metrics.jsonl
    if resume:
        # each step once: drop what was logged after the checkpoint (a finished run keeps its final validation)
        log.rewind(None if finished_at(out_dir) == step else state["extra"].get("metrics_bytes"), step)
        log.write(step=step, resumed=True, elapsed=elapsed, changed={k: list(v) for k, v in changes.items()})

    qat = QAT(model, cfg.pack, reuse=True) if cfg.train.qat else None  # `model` keeps the weights and their names
    net = qat if qat is not None else model
    net = DistributedDataParallel(net, device_ids=[device.index] if device.type == "cuda" else None) if ddp.world_size > 1 else net
    if want_compile(cfg.train.compile, device):
        net = torch.compile(net)
    if not resume:  # scoring the documents counts against the budget (once: a resume scores them again,
        elapsed += scoring_seconds  # its checkpoint's elapsed already holds that time)
    sampler = WindowSampler(data.train_tokens(), cfg.model.context, cfg.train.seed, ddp.rank, ddp.world_size, order)

    last_usage = {}  # the last micro-batch's MoE expert usage, for the log

    def loss_of(x, y):
        with autocast(device, dtype):
            out = net(x, aux=True)
        last_usage["experts"] = out.expert_usage
        if teacher is not None:  # the teacher's forward is inside the step: on the clock
            main = distill_loss(out.logits, teacher.logits(x), y, cfg.train.distill_alpha, cfg.train.distill_temperature)
        else:
            main = F.cross_entropy(out.logits.view(-1, out.logits.size(-1)), y.view(-1))
        return main + model.extra_loss(out, y)

    if want_compile(cfg.train.compile, device):  # compile outside the clock: a forward and backward per state
        now = _agreed_progress(budget_progress(cfg, step, elapsed), ddp, device)
        qat_now, recur_now = qat_due(now, cfg.train), now >= cfg.model.recur_start
        for plan in schedule.plans_from(now):  # and per batch shape the length and batch schedules have ahead
            x, y = sampler.batch(step, 0, plan.micro_batch, plan.accum_steps, plan.seq_len)
            for recur in ([recur_now] if recur_now else [False, True]):  # depth recurrence switches on later
                for on in ([qat_now, True] if qat is not None and not qat_now else [qat_now]):
                    model.recurrence_on = recur
                    if qat is not None:
                        qat.enabled = on
                    loss_of(x.to(device), y.to(device)).backward()
        model.zero_grad(set_to_none=True)

    flops_per_token = count_module(model).train_flops_per_token + (  # the teacher's forward is in the step too
        teacher.forward_flops_per_token(cfg.model.context) if teacher is not None else 0)
    plan = schedule.plan_at(budget_progress(cfg, step, elapsed))
    if ddp.is_main:
        print(f"training {sum(p.numel() for p in model.parameters()):,} parameters on {device} ({str(dtype).removeprefix('torch.')}), "
              f"{ddp.world_size} process(es), {plan.tokens:,} tokens/step = {plan.micro_batch} x {plan.accum_steps} accum "
              f"x {ddp.world_size} x {plan.seq_len}" + (" (now; train.context_schedule, batch_schedule)" if schedule.varies
                                                        else ""), flush=True)
    bar = progress_bar(total=100, desc="train", unit="%", disable=not (progress and ddp.is_main))
    while True:
        fraction, warmdown = _agreed(budget_progress(cfg, step, elapsed), warmdown_fraction(cfg.train, step, elapsed),
                                     ddp=ddp, device=device)
        if fraction >= 1:
            break
        lr_mult = lr_multiplier(fraction, cfg.train, warmdown)
        plan = schedule.plan_at(fraction)  # the agreed fraction: every process takes the same phase
        set_lr(optimizers, lr_mult)
        if cfg.train.momentum_warmup_steps:
            set_momentum(optimizers, muon_momentum(step, cfg.train))
        model.recurrence_on = fraction >= cfg.model.recur_start
        if qat is not None:  # a guarded attribute, so compiled graphs follow it (lmgolf.training.qat)
            qat.enabled = qat_due(fraction, cfg.train)
            if qat.enabled and qat_step is None:
                qat_step = step
                if ddp.is_main:
                    log.write(step=step, qat_on=True, elapsed=elapsed)
                    print(f"step {step}: QAT on, at {fraction:.0%} of the budget", flush=True)
        started = _now(device)
        loss_sum = torch.zeros((), device=device)
        for micro in range(plan.accum_steps):
            x, y = sampler.batch(step, micro, plan.micro_batch, plan.accum_steps, plan.seq_len, fraction)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            sync = micro == plan.accum_steps - 1 or ddp.world_size == 1
            with (net.no_sync() if not sync and isinstance(net, DistributedDataParallel) else contextlib.nullcontext()):
                loss = loss_of(x, y) / plan.accum_steps
                loss.backward()
            loss_sum += loss.detach()
        if cfg.train.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip)
        for opt in optimizers:
            opt.step()
        if qat is not None:  # new weights: snap again at the next forward
            qat.invalidate()
        model.zero_grad(set_to_none=True)
        if averages.enabled:  # on the clock: part of the step's cost
            averages.update(model, step + 1, fraction)
        if ddp.world_size > 1:
            dist.all_reduce(loss_sum, op=dist.ReduceOp.AVG)
        train_loss = float(loss_sum)
        step_seconds = _now(device) - started
        elapsed += step_seconds
        step += 1
        tokens += plan.tokens
        if not math.isfinite(train_loss):
            kept = (f"the last checkpoint in {out_dir / CHECKPOINT_DIR} is intact" if (out_dir / CHECKPOINT_DIR).is_dir()
                    else "no checkpoint was written yet")
            raise LmgolfError(f"training diverged: the loss is {train_loss} at step {step}; stopped without saving, "
                              f"{kept} (try a lower learning rate)")
        tok_s = plan.tokens / step_seconds
        if ddp.is_main:
            bar.n = min(100.0, round(100 * budget_progress(cfg, step, elapsed), 1))
            bar.set_postfix(step=step, loss=f"{train_loss:.4f}", tok_s=f"{tok_s:,.0f}", refresh=False)
            bar.refresh()
            if bar.disable and progress and int(10 * fraction) < int(10 * budget_progress(cfg, step, elapsed)):
                print(f"step {step}: loss {train_loss:.4f}, {tok_s:,.0f} tokens/s, {elapsed:.0f} s, "
                      f"{budget_progress(cfg, step, elapsed):.0%} of the budget", flush=True)
            if step % cfg.train.log_every == 0 or step == 1:
                extra = {"expert_usage": [[round(u, 4) for u in row] for row in last_usage["experts"].tolist()]} \
                    if cfg.model.moe_experts else {}
                log.write(step=step, loss=train_loss, lr_mult=lr_mult, elapsed=elapsed,
                          tokens=tokens, tok_s=tok_s, flops_s=tok_s * flops_per_token,
                          **({"seq_len": plan.seq_len} if schedule.varies else {}), **extra)
        if cfg.train.eval_every and step % cfg.train.eval_every == 0:
            _validate(_scored(model, qat), data, cfg, device, dtype, ddp, log, step, max_tokens=cfg.train.eval_tokens)
        if cfg.train.checkpoint_every and step % cfg.train.checkpoint_every == 0:
            _checkpoint(out_dir, model, optimizers, cfg, step, elapsed, ddp, qat_step, averages, tokens=tokens)
        if on_step is not None:
            on_step(step)
    bar.close()
    export = cfg.train.export_weights if cfg.train.export_weights in averages.kept() else "raw"
    if export != cfg.train.export_weights and ddp.is_main:
        print(f"train.export_weights={cfg.train.export_weights}: that average holds nothing yet (it never started), "
              f"exporting the raw weights", flush=True)
    _checkpoint(out_dir, model, optimizers, cfg, step, elapsed, ddp, qat_step, averages, export, tokens=tokens)
    results = {}
    for variant in averages.kept():  # raw first; each kept average swapped into the model in turn
        with averages.swap_in(model, variant):
            if qat is not None:
                qat.invalidate()
            results[variant] = _validate(_scored(model, qat), data, cfg, device, dtype, ddp, log, step, max_tokens=None,
                                         progress=progress, variant=variant if averages.enabled else None)
    if qat is not None:
        qat.invalidate()
    final = results[export]
    summary = {"steps": step, "tokens": tokens, "elapsed": elapsed,
               "val_loss": final.loss, "val_bpb": final.bpb}
    if averages.enabled:  # what the checkpoint's model holds, and every kept variant's final validation
        summary["export_weights"] = export
        summary["variants"] = {v: {"val_loss": r.loss, "val_bpb": r.bpb} for v, r in results.items()}
    if cfg.train.qat:  # steps taken before QAT switched on (null: it never did)
        summary["qat_step"] = qat_step
    if ddp.is_main:
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2) + "\n")
    log.close()
    close_distributed(ddp)
    return summary


def _write_run_folder(out_dir: Path, cfg: Config, data: DataFolder, ddp: Dist, device, dtype,
                      kept_freed_memory: bool) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    record = run_record()
    record.update(data=data.describe(), device=str(device), dtype=str(dtype), world_size=ddp.world_size,
                  kept_freed_memory=kept_freed_memory)
    atomic_write_text(out_dir / "run.json", json.dumps(record, indent=2) + "\n")  # first: it marks a run folder
    cfg.save(out_dir / "config.json")
    shutil.rmtree(out_dir / "tokenizer", ignore_errors=True)
    data.tokenizer().save(out_dir / "tokenizer")
    (out_dir / "metrics.jsonl").unlink(missing_ok=True)


def _scored(model: GPT, qat: QAT | None):
    """What validation scores: once QAT is on, the export's weights (what the artifact will hold)."""
    return qat if qat is not None and qat.enabled else model


def _validate(model, data: DataFolder, cfg: Config, device, dtype, ddp: Dist, log: MetricsLog, step: int,
              max_tokens: int | None, progress: bool = False, variant: str | None = None):
    tokens, nbytes = data.val_tokens_and_bytes()
    result = evaluate(model, tokens, nbytes, cfg.model.context, max_tokens=max_tokens, device=device, dtype=dtype,
                      progress=progress and ddp.is_main, rank=ddp.rank, world_size=ddp.world_size)
    if ddp.is_main:
        log.write(step=step, val_loss=result.loss, val_bpb=result.bpb, val_tokens=result.tokens,
                  **({"weights": variant} if variant else {}))
        print(f"step {step}: {result.format()}" + (f" | weights: {variant}" if variant else "")
              + (" | QAT: the export's weights" if isinstance(model, QAT) else ""), flush=True)
    return result


def _checkpoint(out_dir, model, optimizers, cfg, step, elapsed, ddp: Dist, qat_step: int | None = None,
                averages: WeightAverages | None = None, export: str = "raw", tokens: int | None = None) -> None:
    """export: the final checkpoint's variant for model.safetensors (the raw weights then go to raw.safetensors);
    tokens: trained so far (with train.context_schedule or batch_schedule the steps' token counts differ)."""
    if ddp.is_main:  # the sampler is a pure function of (seed, step): the step is the data position
        position = {"sampler": "WindowSampler", "seed": cfg.train.seed, "next_step": step}
        tensors, meta = averages.state_dict() if averages is not None else ({}, None)
        extra = {"data_position": position, "qat_step": qat_step, "tokens": tokens,
                 "metrics_bytes": MetricsLog(out_dir / "metrics.jsonl").size()}
        if averages is not None and averages.enabled:
            extra.update(averages=meta, exported=export)
        kept = {"averages": tensors} if tensors else {}  # the extra arguments only when there is something to save
        if export != "raw":
            kept["exported"] = averages.weights(model, export)
        save_checkpoint(out_dir, model, optimizers, cfg, step, elapsed, extra, **kept)
    if ddp.world_size > 1:
        dist.barrier()


def _agreed_progress(fraction: float, ddp: Dist, device) -> float:
    """Rank 0's budget fraction (its clock decides), so that every process sets the same learning rate,
    switches QAT on and stops after the same step."""
    return _agreed(fraction, ddp=ddp, device=device)[0]


def _agreed(*values: float, ddp: Dist, device) -> list[float]:
    """Rank 0's values, on every process, in one broadcast: the budget fraction, and the warmdown's share
    of the budget (from rank 0's mean step time under a time budget with train.warmdown_steps)."""
    if ddp.world_size == 1:
        return list(values)
    value = torch.tensor(values, dtype=torch.float64, device=device)
    dist.broadcast(value, src=0)
    return value.tolist()


def _now(device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter()
