"""`lmgolf export`: a run folder or an artifact written in another tool's format."""

from __future__ import annotations

import json
from pathlib import Path

from lmgolf import api


def register(sub) -> None:
    export = sub.add_parser("export", help="export a run folder or an artifact to another format").add_subparsers(
        dest="export_command", required=True)
    hf = export.add_parser("hf", help="a Hugging Face transformers folder (LlamaForCausalLM or GPT2LMHeadModel, "
                           "tokenizer.json)")
    hf.add_argument("path")
    hf.add_argument("--out", required=True, help="the folder to write (new, empty or an earlier export)")
    hf.add_argument("--no-tokenizer", action="store_true", help="write the model only (for a tokenizer with no "
                    "export)")
    hf.set_defaults(func=cmd_export_hf)
    gguf = export.add_parser("gguf", help="a GGUF file for llama.cpp (the Llama mapping)")
    gguf.add_argument("path")
    gguf.add_argument("--out", required=True, help="the .gguf file to write (new or an earlier export)")
    gguf.add_argument("--dtype", choices=("f32", "f16"), default="f32", help="the matrices' type (norms stay f32)")
    gguf.add_argument("--no-tokenizer", action="store_true", help="write tokenizer.ggml.model = none")
    gguf.set_defaults(func=cmd_export_gguf)


def cmd_export_hf(args) -> None:
    files = api.export_hf(args.path, args.out, tokenizer=not args.no_tokenizer)
    architecture = json.loads((Path(args.out) / "config.json").read_text())["architectures"][0]
    print(f"wrote {args.out}: {', '.join(files)} ({architecture})")


def cmd_export_gguf(args) -> None:
    notes = api.export_gguf(args.path, args.out, dtype=args.dtype, tokenizer=not args.no_tokenizer)
    print(f"wrote {args.out} (GGUF, llama, {args.dtype}, {Path(args.out).stat().st_size:,} bytes)")
    for note in notes:
        print(f"note: {note}")
