"""The `lmgolf` command line: a thin layer over the Python API."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from lmgolf.errors import LmgolfError


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args) or 0
    except LmgolfError as e:
        print(f"lmgolf: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("lmgolf: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into `head` and the like
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


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
    ev.add_argument("--dtype", default="fp32", choices=["fp32", "bf16", "auto"])
    ev.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    ev.add_argument("--quiet", action="store_true")
    ev.set_defaults(func=cmd_eval)

    pack = sub.add_parser("pack", help="write the compressed artifact of a run and print its byte breakdown")
    pack.add_argument("run", help="a run folder")
    pack.add_argument("--out", default=None, help="artifact path (default: RUN/model.lmg)")
    pack.add_argument("--codec", default="zlib", choices=["zlib", "lzma", "zstd"])
    pack.add_argument("--budget", type=int, default=16_000_000, help="bytes for artifact plus code (decimal)")
    pack.add_argument("--allow-over-budget", action="store_true")
    pack.set_defaults(func=cmd_pack)

    gen = sub.add_parser("generate", help="sample text from a run folder or an artifact")
    gen.add_argument("path")
    gen.add_argument("--prompt", default="")
    gen.add_argument("--max-new-tokens", type=int, default=200)
    gen.add_argument("--temperature", type=float, default=0.8)
    gen.add_argument("--top-k", type=int, default=None)
    gen.add_argument("--top-p", type=float, default=None)
    gen.add_argument("--seed", type=int, default=0)
    gen.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    gen.set_defaults(func=cmd_generate)

    demo = sub.add_parser("demo", help="the whole pipeline on the built-in corpus: prepare, train, pack, score, generate")
    demo.add_argument("--out", default="runs/demo")
    demo.add_argument("--time-budget", type=float, default=240.0)
    demo.add_argument("--corpus", default="stdlib-docs")
    demo.add_argument("--tokenizer", default="bpe")
    demo.add_argument("--vocab-size", type=int, default=512)
    demo.set_defaults(func=cmd_demo)
    return p


def cmd_data_prepare(args) -> None:
    from lmgolf.prepare import prepare_data
    meta = prepare_data(args.corpus, args.tokenizer, args.out, vocab_size=args.vocab_size, data_dir=args.data_dir,
                        val_fraction=args.val_fraction, seed=args.seed, tokenizer_model=args.tokenizer_model,
                        overwrite=args.overwrite)
    counts = meta["counts"]
    print(f"wrote {args.out}: vocab {meta['tokenizer']['vocab_size']}, train {counts['train']['tokens']:,} tokens, "
          f"val {counts['val']['tokens']:,} tokens / {counts['val']['bytes']:,} bytes")


def cmd_data_fetch(args) -> None:
    from lmgolf.corpora import fetch_corpus
    print(fetch_corpus(args.name))


def cmd_data_import_pg(args) -> None:
    from lmgolf.prepare import import_pg_shards
    meta = import_pg_shards(args.train, args.val, args.tokenizer_model, args.out)
    print(f"wrote {args.out}: {json.dumps(meta['counts'])}")


def cmd_count(args) -> None:
    from lmgolf.config import load_config
    from lmgolf.count import count_config, format_count
    cfg = load_config(args.preset, args.overrides)
    print(f"preset {args.preset}")
    print(format_count(cfg.model, count_config(cfg.model)))


def cmd_presets(args) -> None:
    from lmgolf.config import load_preset, preset_names
    from lmgolf.count import count_config
    for name in preset_names():
        cfg = load_preset(name)
        m = cfg.model
        print(f"{name:<28}{m.n_layer:>3} x {m.d_model:<5} vocab {m.vocab_size:<7} {count_config(m).params:>13,} params")


def cmd_train(args) -> None:
    from lmgolf.config import Config, load_config
    from lmgolf.train import train
    overrides = list(args.overrides)
    if args.time_budget is not None:
        overrides.append(f"train.time_budget={args.time_budget}")
    if args.max_steps is not None:
        overrides.append(f"train.max_steps={args.max_steps}")
    if args.resume:
        from lmgolf.checkpoint import read_state
        cfg = Config.from_dict(read_state(args.out)["config"], source=f"{args.out}/checkpoint/state.json")
    elif args.preset is None:
        raise LmgolfError("train: --preset is required (or --resume to continue a run)")
    else:
        cfg = load_config(args.preset, overrides)
    summary = train(cfg, args.data, args.out, resume=args.resume, progress=not args.quiet)
    if int(os.environ.get("RANK", 0)) == 0:
        print(json.dumps(summary))


def cmd_eval(args) -> None:
    from lmgolf.data import DataFolder
    from lmgolf.device import pick_dtype
    from lmgolf.evaluate import evaluate
    model, cfg, tokenizer, data_path = _load_any(args.path, args.data, device=args.device)
    data = DataFolder(data_path)
    if tokenizer.fingerprint != data.fingerprint:
        raise LmgolfError(f"{data.path}: tokenized with a different tokenizer than {args.path}")
    tokens, nbytes = data.val_tokens_and_bytes()
    device = model.tok_emb.weight.device
    result = evaluate(model, tokens, nbytes, cfg.model.context, stride=args.stride, max_tokens=args.max_tokens,
                      device=device, dtype=pick_dtype(args.dtype, device), progress=not args.quiet)
    print(result.format())
    print(json.dumps(result.as_dict()))


def cmd_pack(args) -> None:
    from lmgolf.artifact import PackPolicy, pack
    from lmgolf.checkpoint import load_model
    from lmgolf.tokenizers import load_tokenizer
    model, cfg = load_model(args.run)
    tokenizer = load_tokenizer(Path(args.run) / "tokenizer")
    out = args.out or str(Path(args.run) / "model.lmg")
    report = pack(model, cfg, tokenizer, out, PackPolicy(codec=args.codec), budget=args.budget,
                  allow_over_budget=args.allow_over_budget)
    print(report.format())


def cmd_generate(args) -> None:
    from lmgolf.generate import generate
    model, cfg, tokenizer, _ = _load_any(args.path, None, need_data=False, device=args.device)
    prompt = tokenizer.encode(args.prompt) if args.prompt else []
    ids = [tokenizer.bos_id] + prompt
    new = generate(model, ids, args.max_new_tokens, temperature=args.temperature, top_k=args.top_k,
                   top_p=args.top_p, seed=args.seed, stop_id=tokenizer.bos_id)
    print(args.prompt + tokenizer.decode(new))


def cmd_demo(args) -> None:
    from lmgolf.demo import run_demo
    run_demo(out=args.out, time_budget=args.time_budget, corpus=args.corpus, tokenizer=args.tokenizer,
             vocab_size=args.vocab_size)


def _load_any(path: str, data: str | None, need_data: bool = True, device: str = "auto"):
    """(model, config, tokenizer, data folder) from a run folder or a .lmg artifact."""
    from lmgolf.device import pick_device
    from lmgolf.tokenizers import load_tokenizer
    device = pick_device(device)
    p = Path(path)
    if p.is_file():
        from lmgolf.artifact import load_artifact
        model, cfg, tokenizer, _ = load_artifact(p, device=device)
        run_dir = p.parent
    elif p.is_dir():
        from lmgolf.checkpoint import load_model
        model, cfg = load_model(p, device=device)
        tokenizer = load_tokenizer(p / "tokenizer")
        run_dir = p
    else:
        raise LmgolfError(f"{path}: no such run folder or artifact")
    if data is None and need_data:
        record = run_dir / "run.json"
        if not record.is_file():
            raise LmgolfError(f"{path}: pass --data, the data folder to score on (no run.json beside it)")
        try:
            data = json.loads(record.read_text())["data"]["path"]
        except (json.JSONDecodeError, KeyError, TypeError):
            raise LmgolfError(f"{record}: corrupt run record, field 'data.path' missing") from None
    return model, cfg, tokenizer, data


if __name__ == "__main__":
    sys.exit(main())
