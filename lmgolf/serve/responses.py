"""OpenAI's response bodies from the engine's events: completions (text_completion, with the legacy
`logprobs` {tokens, token_logprobs, top_logprobs, text_offset}) and chat completions (chat.completion,
`logprobs.content`), whole or as stream chunks.

Log-probabilities are natural logs, as OpenAI's are (bits = -logprob / ln 2); the first prompt token
(the document start, BOS) has none and is left out of echoed text. A chat reply drops the space that
follows "Assistant:" in the template.
"""

from __future__ import annotations

from lmgolf.serve.engine import Finish, Prompt, Token


def _head(meta: dict, kind: str) -> dict:
    return {"id": meta["id"], "object": kind, "created": meta["created"], "model": meta["model"]}


def _usage(prompt: list[Token], tokens: list[Token]) -> dict:
    return {"prompt_tokens": len(prompt), "completion_tokens": len(tokens), "total_tokens": len(prompt) + len(tokens)}


def _legacy_logprobs(tokens: list[Token], offset: int) -> dict:
    offsets = []
    for t in tokens:
        offsets.append(offset)
        offset += len(t.text)
    return {"tokens": [t.text for t in tokens], "token_logprobs": [t.logprob for t in tokens],
            "top_logprobs": [_top_dict(t.top) for t in tokens], "text_offset": offsets}


def _top_dict(top: list[tuple[str, float]]) -> dict | None:
    """OpenAI's legacy text -> logprob map; where two tokens share a text, the likelier one's."""
    out: dict[str, float] = {}
    for text, logprob in top:
        out.setdefault(text, logprob)
    return out or None


def _chat_logprobs(tokens: list[Token]) -> dict:
    def entry(text: str, logprob: float | None) -> dict:
        return {"token": text, "logprob": logprob, "bytes": list(text.encode())}
    return {"content": [{**entry(t.text, t.logprob), "top_logprobs": [entry(k, v) for k, v in t.top]}
                        for t in tokens]}


def completion_response(meta: dict, parsed, prompt: list[Token], tokens: list[Token], reason: str) -> dict:
    shown = (prompt[1:] if parsed.echo else []) + tokens
    choice = {"text": "".join(t.text for t in shown), "index": 0, "finish_reason": reason,
              "logprobs": None if parsed.logprobs is None else _legacy_logprobs(shown, 0)}
    return {**_head(meta, "text_completion"), "choices": [choice], "usage": _usage(prompt, tokens)}


def completion_chunk(meta: dict, parsed, event) -> list[dict]:
    """The stream chunks of one engine event (none for the prompt unless echo)."""
    if isinstance(event, Prompt):
        shown, reason = (event.tokens[1:] if parsed.echo else []), None
        if not shown:
            return []
    elif isinstance(event, Token):
        shown, reason = [event], None
    else:
        shown, reason = [], event.reason
    offset = meta.setdefault("offset", 0)
    meta["offset"] += sum(len(t.text) for t in shown)
    choice = {"text": "".join(t.text for t in shown), "index": 0, "finish_reason": reason,
              "logprobs": None if parsed.logprobs is None or not shown else _legacy_logprobs(shown, offset)}
    return [{**_head(meta, "text_completion"), "choices": [choice]}]


def _reply_text(meta: dict, text: str) -> str:
    """The reply as shown: the template's space after "Assistant:" dropped from its start."""
    if not meta.get("started"):
        text = text.lstrip(" ")
        meta["started"] = bool(text)
    return text


def chat_response(meta: dict, parsed, prompt: list[Token], tokens: list[Token], reason: str) -> dict:
    message = {"role": "assistant", "content": _reply_text(meta, "".join(t.text for t in tokens))}
    choice = {"index": 0, "message": message, "finish_reason": reason,
              "logprobs": None if parsed.logprobs is None else _chat_logprobs(tokens)}
    return {**_head(meta, "chat.completion"), "choices": [choice], "usage": _usage(prompt, tokens)}


def chat_chunk(meta: dict, parsed, event) -> list[dict]:
    if isinstance(event, Prompt):
        delta, reason, tokens = {"role": "assistant", "content": ""}, None, []
    elif isinstance(event, Token):
        delta, reason, tokens = {"content": _reply_text(meta, event.text)}, None, [event]
    else:
        assert isinstance(event, Finish)
        delta, reason, tokens = {}, event.reason, []
    choice = {"index": 0, "delta": delta, "finish_reason": reason,
              "logprobs": None if parsed.logprobs is None or not tokens else _chat_logprobs(tokens)}
    return [{**_head(meta, "chat.completion.chunk"), "choices": [choice]}]
