"""`lmgolf export`: a run folder or an artifact written in another tool's format."""

from __future__ import annotations

from lmgolf import api


def register(sub) -> None:
    export = sub.add_parser("export", help="export a run folder or an artifact to another format").add_subparsers(
        dest="export_command", required=True)
    hf = export.add_parser("hf", help="a Hugging Face transformers folder (LlamaForCausalLM, tokenizer.json)")
    hf.add_argument("path")
    hf.add_argument("--out", required=True, help="the folder to write (new, empty or an earlier export)")
    hf.add_argument("--no-tokenizer", action="store_true", help="write the model only (tokenizers other than "
                    "byte and gpt2 have no export)")
    hf.set_defaults(func=cmd_export_hf)


def cmd_export_hf(args) -> None:
    files = api.export_hf(args.path, args.out, tokenizer=not args.no_tokenizer)
    print(f"wrote {args.out}: {', '.join(files)} (LlamaForCausalLM)")
