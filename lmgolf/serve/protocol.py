"""The OpenAI request bodies, checked field by field, and the chat template.

A bad field is refused with BadRequest naming it: the server answers its status with OpenAI's error shape
{"error": {"message", "type", "param", "code"}}. Fields this server does not use (penalties, user, ...)
are ignored; n must be 1.

The chat template (these are base models, so a conversation is text they continue), the one
`lmgolf chat` uses, with system messages as their own line:

    System: you are terse
    User: hello
    Assistant: hi there
    User: how are you?
    Assistant:

The prompt is [bos] + those tokens; the reply stops at a newline followed by "User:" (the model starting
the next turn) or the document end, besides the request's own stop strings.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from lmgolf.serve.chat import ASSISTANT, STOP, USER
from lmgolf.serve.engine import Request
from lmgolf.serve.limits import Limits

ROLES = {"system": "System:", "user": USER, "assistant": ASSISTANT}


class BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None, status: int = 400, type: str = "invalid_request_error",
                 code: str | None = None):
        super().__init__(message)
        self.message, self.param, self.status, self.type, self.code = message, param, status, type, code

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


@dataclass
class Parsed:
    request: Request
    stream: bool
    prompt_text: str
    echo: bool = False
    logprobs: int | None = None  # None: no logprobs in the response


def render_messages(messages: list[dict]) -> str:
    """The chat template above: one "Role: content" line per message, then an open "Assistant:"."""
    return "".join(f"{ROLES[m['role']]} {m['content']}\n" for m in messages) + ASSISTANT


def parse_completion(body, limits: Limits, tokenizer, model_name: str) -> Parsed:
    body = _object(body)
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1:
        prompt = prompt[0]
    if not isinstance(prompt, str):
        raise BadRequest("prompt: must be a string (or a list of one string)", "prompt")
    logprobs = _int(body, "logprobs", None, 0, 5)
    return _parsed(body, "prompt", prompt, limits, tokenizer, model_name, (),
                   echo=_bool(body, "echo", False), logprobs=logprobs)


def parse_chat(body, limits: Limits, tokenizer, model_name: str) -> Parsed:
    body = _object(body)
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise BadRequest("messages: must be a non-empty list of {role, content} objects", "messages")
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise BadRequest(f"messages[{i}].role: must be one of {', '.join(ROLES)}", f"messages[{i}].role")
        if not isinstance(m.get("content"), str):
            raise BadRequest(f"messages[{i}].content: must be a string", f"messages[{i}].content")
    top = _int(body, "top_logprobs", 0, 0, 20)
    logprobs = top if _bool(body, "logprobs", False) else None
    if "max_completion_tokens" in body and "max_tokens" not in body:
        body = {**body, "max_tokens": body["max_completion_tokens"]}
    return _parsed(body, "messages", render_messages(messages), limits, tokenizer, model_name, (STOP,),
                   logprobs=logprobs)


def parse_surprisal(body, limits: Limits, tokenizer) -> Parsed:
    body = _object(body)
    text = body.get("text")
    if not isinstance(text, str):
        raise BadRequest("text: must be a string", "text")
    return _parsed({"max_tokens": 0}, "text", text, limits, tokenizer, None, ())


def _parsed(body: dict, field: str, text: str, limits: Limits, tokenizer, model_name: str | None,
            stops: tuple[str, ...], **extra) -> Parsed:
    model = body.get("model")
    if model is not None and model_name is not None and model != model_name:
        raise BadRequest(f"model: no model named {model!r} here (this server has {model_name!r})", "model", 404,
                         code="model_not_found")
    if len(text.encode("utf-8")) > limits.max_prompt_bytes:
        raise BadRequest(f"{field}: longer than the limit of {limits.max_prompt_bytes:,} bytes", field,
                         code="context_length_exceeded")
    if _int(body, "n", 1, 1, 1) != 1:
        raise BadRequest("n: only 1 is supported", "n")
    top_k = _int(body, "top_k", None, 0, None)
    top_p = _number(body, "top_p", 1.0, 0.0, 1.0, low_open=True)
    request = Request(
        prompt_ids=[tokenizer.bos_id] + (tokenizer.encode(text) if text else []),
        max_new_tokens=_int(body, "max_tokens", min(128, limits.max_new_tokens), 0, limits.max_new_tokens),
        temperature=_number(body, "temperature", 1.0, 0.0, 2.0),
        top_k=top_k or None, top_p=None if top_p == 1 else top_p,
        seed=_int(body, "seed", None, None, None),
        stop=stops + _stops(body), top_logprobs=extra.get("logprobs") or 0, timeout=limits.timeout)
    return Parsed(request, _bool(body, "stream", False), text, **extra)


def _object(body) -> dict:
    if not isinstance(body, dict):
        raise BadRequest("the request body must be a JSON object")
    return body


def _bool(body: dict, name: str, default: bool) -> bool:
    value = body.get(name)
    if value is None:
        return default
    if not isinstance(value, bool):
        raise BadRequest(f"{name}: must be true or false, got {value!r}", name)
    return value


def _int(body: dict, name: str, default, low: int | None, high: int | None):
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequest(f"{name}: must be an integer, got {value!r}", name)
    if (low is not None and value < low) or (high is not None and value > high):
        span = f"[{'-inf' if low is None else low}, {'inf' if high is None else high}]"
        raise BadRequest(f"{name}: must lie in {span}, got {value}", name)
    return value


def _number(body: dict, name: str, default: float, low: float, high: float, low_open: bool = False) -> float:
    value = body.get(name)
    if value is None:
        return default
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise BadRequest(f"{name}: must be a number, got {value!r}", name)
    if value > high or value < low or (low_open and value == low):
        raise BadRequest(f"{name}: must lie in {'(' if low_open else '['}{low}, {high}], got {value}", name)
    return float(value)


def _stops(body: dict) -> tuple[str, ...]:
    stop = body.get("stop")
    if stop is None:
        return ()
    stops = [stop] if isinstance(stop, str) else stop
    if not isinstance(stops, list) or len(stops) > 4 or not all(isinstance(s, str) for s in stops):
        raise BadRequest("stop: must be a string or a list of at most 4 strings", "stop")
    return tuple(s for s in stops if s)
