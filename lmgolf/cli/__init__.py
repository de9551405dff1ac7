"""The `lmgolf` command line: a thin layer over the Python API.

The core commands are here; larger command groups live beside it in lmgolf/cli/NAME.py, each module
with `register(subparsers)` that adds its parsers and sets their `func`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import sys

from lmgolf import api
from lmgolf.errors import LmgolfError

# the named accelerators of `lmgolf plan` (lmgolf.study.plan.HARDWARE, kept in step by tests/test_plan.py)
PLAN_HARDWARE = ("h100-bf16", "h100-fp8", "h200-bf16", "a100-bf16", "a100-tf32", "v100-fp16", "t4-fp16", "l4-bf16")
# command groups in their own modules (lmgolf/cli/NAME.py), each with register(subparsers)
COMMAND_MODULES = ("export", "serve", "sweep", "plots")
COMMANDS = {"score": "eval"}  # the command of each API call, where the names differ
# the flag of each API argument, where it is not the argument's name with dashes
FLAGS = {"ttt": "--ttt-* and --lora-*", "ttt.chunk": "--ttt-chunk", "ttt.steps": "--ttt-steps", "ttt.lr": "--ttt-lr",
         "ttt.momentum": "--ttt-momentum", "ttt.optimizer": "--ttt-optimizer", "ttt.lora_rank": "--lora-rank",
         "ttt.lora_alpha": "--lora-alpha", "ttt.reset_docs": "--ttt-reset-docs", "overrides": "key=value overrides"}


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # key=value overrides may follow options that come after a positional argument
    if extra and hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
        args.overrides = list(args.overrides) + extra
    elif extra:
        parser.error(f"unrecognized arguments: {' '.join(extra)}")
    try:
        return args.func(args) or 0
    except api.ArgumentError as e:
        print(f"lmgolf: error: {e.worded(COMMANDS.get(e.call, e.call), flag_spelling)}", file=sys.stderr)
        return 2
    except LmgolfError as e:
        print(f"lmgolf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmgolf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def flag_spelling(name: str, value: object = None) -> str:
    """An API argument as the command line writes it: --stride, --mode ttt or temperature, --baselines."""
    flag = FLAGS.get(name, "--" + name.replace("_", "-"))
    if value is None or value is True:
        return flag
    return f"{flag} {' or '.join(map(str, value if isinstance(value, tuple) else (value,)))}"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lmgolf", description="Build the best small language model under a budget.")
    sub = p.add_subparsers(dest="command", required=True)

    data = sub.add_parser("data", help="prepare corpora into token shards").add_subparsers(dest="data_command", required=True)
    prep = data.add_parser("prepare", help="tokenize a corpus into a data folder")
    prep.add_argument("--corpus", required=True, help="a named corpus, stdlib-docs, or a path to .txt/.txt.gz/.jsonl(.gz)/folder")
    prep.add_argument("--tokenizer", required=True, help="byte | char | word | gpt2 | bpe | unigram | sentencepiece")
    prep.add_argument("--vocab-size", type=int, default=None, help="for bpe/unigram (and a cap for word)")
    prep.add_argument("--tokenizer-model", default=None, help="a SentencePiece .model file, for --tokenizer sentencepiece")
    prep.add_argument("--out", required=True)
    prep.add_argument("--data-dir", default=None, help="corpus folder (default: $LMGOLF_DATA_DIR)")
    prep.add_argument("--val-fraction", type=float, default=0.05)
    prep.add_argument("--seed", type=int, default=0)
    prep.add_argument("--overwrite", action="store_true")
    prep.set_defaults(func=cmd_data_prepare)
    fetch = data.add_parser("fetch", help="download a full public corpus into the cache (sha256-pinned)")
    fetch.add_argument("name")
    fetch.set_defaults(func=cmd_data_fetch)
    pg = data.add_parser("import-pg", help="build a data folder from Parameter Golf .bin shards and its SentencePiece model")
    pg.add_argument("--train", required=True, help="glob of training shards")
    pg.add_argument("--val", required=True, help="glob of validation shards")
    pg.add_argument("--tokenizer-model", required=True)
    pg.add_argument("--out", required=True)
    pg.set_defaults(func=cmd_data_import_pg)

    count = sub.add_parser("count", help="parameters by group and training FLOPs per token")
    count.add_argument("--preset", required=True)
    count.add_argument("overrides", nargs="*", help="key=value config overrides")
    count.set_defaults(func=cmd_count)

    presets = sub.add_parser("presets", help="list the named presets")
    presets.set_defaults(func=cmd_presets)

    train = sub.add_parser("train", help="train a model (under torchrun: python -m lmgolf train ...)")
    train.add_argument("--preset", default=None, help="named preset (not needed with --resume)")
    train.add_argument("--data", required=True, help="a data folder written by `lmgolf data prepare`")
    train.add_argument("--out", required=True, help="the run folder")
    train.add_argument("--time-budget", type=float, default=None, help="seconds of training")
    train.add_argument("--max-steps", type=int, default=None)
    train.add_argument("--resume", action="store_true", help="continue the run in --out from its checkpoint")
    train.add_argument("--quiet", action="store_true", help="no progress bar")
    train.add_argument("overrides", nargs="*", help="key=value config overrides, e.g. model.n_layer=6 train.seed=2")
    train.set_defaults(func=cmd_train)

    ev = sub.add_parser("eval", help="validation loss and exact bits per byte of a run folder or an artifact")
    ev.add_argument("path", help="a run folder or a packed .lmg artifact")
    ev.add_argument("--data", default=None, help="data folder (default: the one the run was trained on)")
    ev.add_argument("--stride", type=int, default=None, help="sliding-window stride (default: the context, no overlap)")
    ev.add_argument("--max-tokens", type=int, default=None, help="score only this prefix of the validation split")
    ev.add_argument("--split", default="val", choices=list(api.SPLITS),
                    help="the data folder's split to score: val (default) or test (PTB, WikiText-2: the official test file)")
    ev.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "auto"])
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--quiet", action="store_true")
    ev.add_argument("--mode", default="window", choices=["window", "docs", "ttt", "temperature"],
                    help="window: sliding windows | docs: no context across documents | ttt: score-first "
                         "test-time training | temperature: logits / T, T fitted on training tokens")
    ev.add_argument("--docs", action="store_true", help="document-isolated windows in the ttt and temperature modes")
    ev.add_argument("--ttt-chunk", type=int, default=None, help="ttt: targets per chunk (default: the context)")
    ev.add_argument("--ttt-steps", type=int, default=None, help="ttt: optimizer steps per chunk, after scoring it (default 1)")
    ev.add_argument("--ttt-lr", type=float, default=None, help="ttt: SGD learning rate (default 1e-3)")
    ev.add_argument("--ttt-momentum", type=float, default=None, help="ttt: SGD momentum (default 0.9)")
    ev.add_argument("--ttt-optimizer", default=None, choices=["sgd", "lora"],
                    help="ttt: train all weights (sgd, the default) or LoRA adapters")
    ev.add_argument("--lora-rank", type=int, default=None, help="ttt with lora: adapter rank (default 8)")
    ev.add_argument("--lora-alpha", type=float, default=None, help="ttt with lora: adapter alpha (default: the rank)")
    ev.add_argument("--ttt-reset-docs", action="store_true", help="ttt: restore the weights at every document start")
    ev.add_argument("--fit-tokens", type=int, default=None, help="temperature: training tokens to fit T on (default 16384)")
    ev.add_argument("--seed", type=int, default=0, help="ttt (LoRA init) and temperature (training windows)")
    ev.add_argument("--baselines", action="store_true", help="also print the bpb of zlib, lzma, bz2 and zstd on the val text")
    ev.add_argument("--baseline-prefix-bytes", type=int, default=None,
                    help="bytes of training text the compressors read first (default 8,000,000)")
    ev.add_argument("--text", default=None, metavar="FILE",
                    help="score this text instead of the val split: a file (.jsonl: a document a line) or a folder")
    ev.add_argument("--max-text-bytes", type=int, default=api.MAX_TEXT_BYTES,
                    help=f"refuse a --text over this many bytes (default {api.MAX_TEXT_BYTES:,})")
    ev.set_defaults(func=cmd_eval)

    pack = sub.add_parser("pack", help="write the compressed artifact of a run and print its byte breakdown")
    pack.add_argument("run", help="a run folder")
    pack.add_argument("--out", default=None, help="artifact path (default: RUN/model.lmg)")
    pack.add_argument("--policy", default=None, help="a named packing policy (default: the run config's pack section): "
                      "int8 | int6-emb8 | int5-mlp | ternary | gptq-int6 | gptq-int4")
    pack.add_argument("--codec", default=None, help="zlib | lzma | zstd | brotli (default: the policy's)")
    pack.add_argument("--runner", default="plain", choices=["plain", "compressed"],
                      help="the runner file whose bytes count as code")
    pack.add_argument("--write-runner", default=None, metavar="PATH", help="also write that runner file")
    pack.add_argument("--data", default=None, help="data folder for GPTQ calibration (default: the run's)")
    pack.add_argument("--budget", type=int, default=16_000_000, help="bytes for artifact plus code (decimal)")
    pack.add_argument("--allow-over-budget", action="store_true")
    pack.add_argument("overrides", nargs="*", help="pack policy fields, e.g. clip=search byte_shuffle=true "
                      "'group_storage={\"mlp\": \"int5-row\"}'")
    pack.set_defaults(func=cmd_pack)

    fit = sub.add_parser("fit", help="the deepest or widest variant of a preset whose artifact plus code fits a budget")
    fit.add_argument("--preset", required=True)
    fit.add_argument("--budget", type=int, default=16_000_000, help="bytes for artifact plus code (decimal)")
    fit.add_argument("--search", default="depth", choices=["depth", "width"],
                     help="depth: model.n_layer; width: heads of the preset's head size (d_model follows)")
    fit.add_argument("--policy", default=None, help="a named packing policy (default: the preset's pack section)")
    fit.add_argument("--codec", default=None, help="zlib | lzma | zstd | brotli")
    fit.add_argument("--runner", default="plain", choices=["plain", "compressed"])
    fit.add_argument("--data", default=None, help="a data folder, to count its tokenizer in the artifact header")
    fit.add_argument("--no-verify", action="store_true", help="skip the real pack of the winner")
    fit.add_argument("overrides", nargs="*", help="key=value config overrides (model.*, train.*, pack.*)")
    fit.set_defaults(func=cmd_fit)

    gen = sub.add_parser("generate", help="sample text from a run folder or an artifact")
    gen.add_argument("path")
    gen.add_argument("--prompt", default="")
    gen.add_argument("--max-new-tokens", type=int, default=200, help="at most 16384")
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    gen.add_argument("--stream", action=argparse.BooleanOptionalAction, default=True,
                     help="print the text as it is sampled (the default); --no-stream: all at the end")
    gen.set_defaults(func=cmd_generate)

    chat = sub.add_parser("chat", help="a REPL over a run folder or an artifact (User:/Assistant: lines; /reset, /quit)")
    chat.add_argument("path")
    chat.add_argument("--max-new-tokens", type=int, default=200, help="per reply, at most 16384")
    chat.add_argument("--temperature", type=float, default=0.8)
    chat.add_argument("--top-k", type=int, default=None)
    chat.add_argument("--top-p", type=float, default=None)
    chat.add_argument("--seed", type=int, default=0, help="reply n is sampled with seed + n")
    chat.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    chat.set_defaults(func=cmd_chat)

    res = sub.add_parser("results", help="the results store: `results STUDY` tables a study, `results add RUN...` adds runs",
                         usage="lmgolf results STUDY [--baseline ARM] [--metric M] [--csv FILE] [--markdown FILE] [--db PATH]\n"
                               "       lmgolf results add RUN [RUN ...] [--study S] [--arm A] [--seed N] [--db PATH]")
    res.add_argument("target", help="a study name, or `add` (then run folders), or `show` (then a study name)")
    res.add_argument("runs", nargs="*", help="run folders, after `add`")
    res.add_argument("--db", default=None, help="the results database (default: $LMGOLF_RESULTS or runs/results.sqlite)")
    res.add_argument("--study", default=None, help="add: the study the runs belong to")
    res.add_argument("--arm", default=None, help="add: the arm of the study")
    res.add_argument("--seed", type=int, default=None, help="add: the seed (default: the config's train.seed)")
    res.add_argument("--baseline", default=None, help="show: the arm the others are compared with (Welch's t-test)")
    res.add_argument("--metric", default="val_loss", help="show: the compared metric (default val_loss, nats per token)")
    res.add_argument("--min-delta", type=float, default=0.005,
                     help="show: the golf rule's least improvement, in the metric's units (default 0.005 nats)")
    res.add_argument("--csv", default=None, metavar="FILE", help="show: also write the table as CSV")
    res.add_argument("--markdown", default=None, metavar="FILE", help="show: also write the table as Markdown")
    res.set_defaults(func=cmd_results)

    demo = sub.add_parser("demo", help="the whole pipeline on the built-in corpus: prepare, train, pack, score, generate")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--time-budget", type=float, default=240.0)
    demo.add_argument("--corpus", default="stdlib-docs")
    demo.add_argument("--tokenizer", default="bpe")
    demo.add_argument("--vocab-size", type=int, default=512)
    demo.set_defaults(func=cmd_demo)

    plan = sub.add_parser("plan", help="tokens, predicted loss (Hoffmann and Besiroglu fits), epochs and parameters per byte budget")
    plan.add_argument("--params", type=float, required=True, help="parameters N, e.g. 40e6")
    plan.add_argument("--tokens", type=float, default=None, help="training tokens D, e.g. 800e6")
    plan.add_argument("--flops", type=float, default=None, help="training FLOPs C (D = C / 6N)")
    plan.add_argument("--hardware", default=None, help="a named accelerator peak: " + ", ".join(PLAN_HARDWARE))
    plan.add_argument("--peak-flops", type=float, default=None, help="peak FLOP/s of one accelerator, instead of --hardware")
    plan.add_argument("--hours", type=float, default=None, help="wall-clock hours, with --hardware or --peak-flops")
    plan.add_argument("--mfu", type=float, default=0.4, help="model FLOPs utilization, a fraction of peak (default 0.4)")
    plan.add_argument("--gpus", type=int, default=1, help="accelerators (default 1)")
    plan.add_argument("--corpus-tokens", type=float, default=None, help="unique tokens U in the corpus: epochs and repetition")
    plan.add_argument("--budget-bytes", type=int, default=16_000_000, help="bytes for artifact plus code (default 16,000,000)")
    plan.add_argument("--runner", default="plain", choices=["plain", "compressed"], help="the runner whose bytes count as code")
    plan.add_argument("--row", type=int, default=512, help="weights per row, for the fp16 scales' overhead (default 512)")
    plan.set_defaults(func=cmd_plan)

    for module in COMMAND_MODULES:
        importlib.import_module(f"lmgolf.cli.{module}").register(sub)
    return p


def cmd_data_prepare(args) -> None:
    from lmgolf.data.prepare import prepare_data
    meta = prepare_data(args.corpus, args.tokenizer, args.out, vocab_size=args.vocab_size, data_dir=args.data_dir,
                        val_fraction=args.val_fraction, seed=args.seed, tokenizer_model=args.tokenizer_model,
                        overwrite=args.overwrite)
    counts = meta["counts"]
    print(f"wrote {args.out}: vocab {meta['tokenizer']['vocab_size']}, train {counts['train']['tokens']:,} tokens, "
          f"val {counts['val']['tokens']:,} tokens / {counts['val']['bytes']:,} bytes")


def cmd_data_fetch(args) -> None:
    from lmgolf.data.corpora import fetch_corpus
    print(fetch_corpus(args.name))


def cmd_data_import_pg(args) -> None:
    from lmgolf.data.prepare import import_pg_shards
    meta = import_pg_shards(args.train, args.val, args.tokenizer_model, args.out)
    print(f"wrote {args.out}: {json.dumps(meta['counts'])}")


def cmd_count(args) -> None:
    from lmgolf.config import load_config
    from lmgolf.model.count import count_config, format_count
    cfg = load_config(args.preset, args.overrides)
    print(f"preset {args.preset}")
    print(format_count(cfg.model, count_config(cfg.model)))


def cmd_presets(args) -> None:
    from lmgolf.config import load_preset, preset_names
    from lmgolf.model.count import count_config
    for name in preset_names():
        cfg = load_preset(name)
        m = cfg.model
        print(f"{name:<28}{m.n_layer:>3} x {m.d_model:<5} vocab {m.vocab_size:<7} {count_config(m).params:>13,} params")


def cmd_train(args) -> None:
    run = api.train(args.out, preset=args.preset, data=args.data, overrides=args.overrides, resume=args.resume,
                    time_budget=args.time_budget, max_steps=args.max_steps, progress=not args.quiet)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(run.summary))


def cmd_eval(args) -> None:
    ttt = {"chunk": args.ttt_chunk, "steps": args.ttt_steps, "lr": args.ttt_lr, "momentum": args.ttt_momentum,
           "optimizer": args.ttt_optimizer, "lora_rank": args.lora_rank, "lora_alpha": args.lora_alpha,
           "reset_docs": args.ttt_reset_docs or None}  # a store_true flag: None when not given
    result = api.score(args.path, args.data, mode=args.mode, stride=args.stride, max_tokens=args.max_tokens,
                       docs=args.docs, ttt={k: v for k, v in ttt.items() if v is not None}, fit_tokens=args.fit_tokens,
                       seed=args.seed, baselines=args.baselines, baseline_prefix_bytes=args.baseline_prefix_bytes,
                       dtype=args.dtype, device=args.device, progress=not args.quiet, text=args.text,
                       max_text_bytes=args.max_text_bytes, split=args.split)
    print(result.format())
    print(json.dumps(result.as_dict()))


def cmd_pack(args) -> None:
    from lmgolf.packing.runner import is_runner, write_runner
    from lmgolf.runfiles import check_replaceable
    if args.write_runner:  # refused before the artifact is written, not after
        check_replaceable(args.write_runner, "runner file", is_runner)
    report = api.pack(args.run, args.out, policy=args.policy, codec=args.codec, overrides=args.overrides,
                      runner=args.runner, budget=args.budget, allow_over_budget=args.allow_over_budget, data=args.data)
    print(report.format())
    if args.write_runner:
        size = write_runner(args.write_runner, args.runner)
        print(f"wrote the {args.runner} runner ({size:,} bytes) -> {args.write_runner}: "
              f"python {args.write_runner} {report.path} DATA_FOLDER")


def cmd_fit(args) -> None:
    from lmgolf.config import load_config, pack_policy
    from lmgolf.study.fit import fit
    cfg = load_config(args.preset, args.overrides)
    policy = pack_policy(cfg.pack, args.policy, [f"codec={args.codec}"] if args.codec else [])
    tokenizer = None
    if args.data:
        from lmgolf.data.folder import DataFolder
        tokenizer = DataFolder(args.data).tokenizer()
    result = fit(cfg, args.budget, args.search, policy, args.runner, tokenizer)
    key = "model.n_layer" if args.search == "depth" else "KV groups"
    print(f"{key:>14}{'parameters':>14}{'estimate':>14}{'+ code':>12}  fits")
    for c in result.tried:
        print(f"{c.value:>14}{c.params:>14,}{c.estimate:>14,}{c.estimate + result.code_bytes:>12,}  {'yes' if c.fits else 'no'}")
    if result.best is None:
        raise LmgolfError(f"fit: not even the smallest {args.search} fits {args.budget:,} bytes with this policy")
    best = result.best
    print(f"best: {' '.join(result.overrides())}: {best.params:,} parameters, estimated {best.estimate:,} + code "
          f"{result.code_bytes:,} = {best.estimate + result.code_bytes:,} bytes of {args.budget:,} ({policy.codec})")
    if not args.no_verify:
        from lmgolf.study.fit import verify
        estimate = best.estimate
        result = verify(result, cfg, policy, tokenizer, args.runner)
        if result.best is None:
            raise LmgolfError(f"fit: packed for real, not even the smallest {args.search} fits {args.budget:,} bytes")
        if result.best.value != best.value:
            print(f"verified: the estimate was {estimate:,} bytes, too low; stepped down to {' '.join(result.overrides())}")
        error = (result.best.estimate - result.packed_bytes) / result.packed_bytes
        print(f"verified: packed {result.packed_bytes:,} + code {result.code_bytes:,} = "
              f"{result.packed_bytes + result.code_bytes:,} bytes; the estimate was off by {error:+.2%}")
    print(f"train it: lmgolf train --preset {args.preset} {' '.join([*args.overrides, *result.overrides()])} ...")


def cmd_generate(args) -> None:
    text = api.generate(args.path, args.prompt, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                        top_p=args.top_p, seed=args.seed, device=args.device, stream=args.stream)
    for piece in [text] if isinstance(text, str) else text:  # --stream: the text as it is sampled
        print(piece, end="", flush=True)
    print()


def cmd_chat(args) -> int:
    from lmgolf.serve.chat import Chat, chat_loop
    loaded = api.load(args.path, device=args.device)
    chat = Chat(loaded.model, loaded.tokenizer, args.max_new_tokens, args.temperature, args.top_k, args.top_p, args.seed)

    def write(text: str) -> None:
        sys.stdout.write(text)
        sys.stdout.flush()

    return chat_loop(chat, sys.stdin, write)


def cmd_plan(args) -> None:
    from lmgolf.study.plan import plan
    result = plan(args.params, tokens=args.tokens, flops=args.flops, hardware=args.hardware, peak_flops=args.peak_flops,
                  hours=args.hours, mfu=args.mfu, gpus=args.gpus, corpus_tokens=args.corpus_tokens,
                  budget_bytes=args.budget_bytes, runner=args.runner, row=args.row)
    print(result.format())
    print(json.dumps(result.as_dict()))


def cmd_results(args) -> None:
    from lmgolf.study.store import Store
    if args.target == "add":
        if not args.runs:
            raise LmgolfError("results add: name at least one run folder")
        for flag in ("baseline", "csv", "markdown"):
            if getattr(args, flag) is not None:
                raise LmgolfError(f"results add: --{flag} is for showing a study, not adding runs")
        with Store(args.db) as store:
            for run in args.runs:
                row = store.add_run(run, study=args.study, arm=args.arm, seed=args.seed)
                print(f"added {row['path']}: study {args.study or '-'}, arm {args.arm or '-'}, seed {row['seed']}, "
                      f"val_loss {row['val_loss']}, val_bpb {row['val_bpb']} -> {store.path}")
        return
    from lmgolf.runfiles import atomic_write_text
    from lmgolf.study.results import study_results
    study = args.target
    if args.target == "show":
        if len(args.runs) != 1:
            raise LmgolfError("results show: name one study")
        study = args.runs[0]
    elif args.runs:
        raise LmgolfError(f"results {args.target}: unexpected arguments {' '.join(args.runs)} (to add runs: "
                          f"lmgolf results add RUN ...)")
    for flag in ("study", "arm", "seed"):
        if getattr(args, flag) is not None:
            raise LmgolfError(f"results {study}: --{flag} is for `lmgolf results add`")
    with Store(args.db) as store:
        table = study_results(store.runs(study), study, baseline=args.baseline, metric=args.metric,
                              min_delta=args.min_delta)
    text = table.format_markdown()
    print(text, end="")
    if args.csv:
        atomic_write_text(args.csv, table.to_csv())
    if args.markdown:
        atomic_write_text(args.markdown, text)


def cmd_demo(args) -> None:
    from lmgolf.study.demo import run_demo
    run_demo(out=args.out, time_budget=args.time_budget, corpus=args.corpus, tokenizer=args.tokenizer,
             vocab_size=args.vocab_size)


if __name__ == "__main__":
    sys.exit(main())
