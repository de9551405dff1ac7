"""`lmgolf serve`: the OpenAI-style server and chat page over a run folder or an artifact."""

from __future__ import annotations

from pathlib import Path

from lmgolf import api
from lmgolf.errors import LmgolfError
from lmgolf.serve.limits import Limits

DEFAULTS = Limits()


def register(sub) -> None:
    p = sub.add_parser("serve", help="serve a run folder or an artifact: OpenAI-style API and a chat page at /")
    p.add_argument("path", help="a run folder or a .lmg artifact")
    p.add_argument("--host", default="127.0.0.1", help="the address to bind (default 127.0.0.1, this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--max-prompt-bytes", type=int, default=DEFAULTS.max_prompt_bytes,
                   help=f"the longest prompt or chat, in UTF-8 bytes (default {DEFAULTS.max_prompt_bytes:,})")
    p.add_argument("--max-new-tokens", type=int, default=DEFAULTS.max_new_tokens,
                   help=f"the most tokens one request may ask for (default {DEFAULTS.max_new_tokens})")
    p.add_argument("--timeout", type=float, default=DEFAULTS.timeout,
                   help=f"seconds one request may take before it is ended with 504 (default {DEFAULTS.timeout:g})")
    p.add_argument("--max-streams", type=int, default=DEFAULTS.max_streams,
                   help=f"requests decoded at once; more get 429 (default {DEFAULTS.max_streams})")
    p.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    p.set_defaults(func=cmd_serve)


def limits_from(args) -> Limits:
    from lmgolf.serve.generate import MAX_NEW_TOKENS  # here, not at the top: it imports torch, which every command would pay
    for flag, value, low in (("--max-prompt-bytes", args.max_prompt_bytes, 1), ("--max-new-tokens", args.max_new_tokens, 1),
                             ("--max-streams", args.max_streams, 1), ("--port", args.port, 0)):
        if value < low:
            raise LmgolfError(f"{flag}: must be at least {low}, got {value}")
    if args.max_new_tokens > MAX_NEW_TOKENS:
        raise LmgolfError(f"--max-new-tokens: at most {MAX_NEW_TOKENS:,}, got {args.max_new_tokens}")
    if not args.timeout > 0:
        raise LmgolfError(f"--timeout: must be more than 0 seconds, got {args.timeout}")
    return Limits(args.max_prompt_bytes, args.max_new_tokens, args.timeout, args.max_streams)


def cmd_serve(args) -> None:
    from lmgolf.serve.card import model_card
    limits = limits_from(args)
    try:
        from lmgolf.serve.server import create_app, serve
    except ImportError as e:
        raise LmgolfError(f"lmgolf serve needs starlette and uvicorn ({e}): pip install 'lmgolf[serve]'") from None
    loaded = api.load(args.path, device=args.device)
    loaded.model.eval()
    card = model_card(loaded, Path(args.path).resolve().name)
    print(f"serving {card['name']} ({card['parameters']:,} parameters) at http://{args.host}:{args.port}/", flush=True)
    serve(create_app(loaded.model, loaded.tokenizer, card, limits), args.host, args.port)
