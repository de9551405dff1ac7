"""The server's limits, with their defaults: in a module of their own so that the `lmgolf` command line can
show them in `serve --help` without importing torch (which every command would then pay)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Limits:
    max_prompt_bytes: int = 32_768
    max_new_tokens: int = 1024
    timeout: float = 120.0  # seconds a request may take, queued or decoding
    max_streams: int = 32   # requests decoded at once; more get 429
