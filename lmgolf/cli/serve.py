"""`lmgolf serve`: the OpenAI-style server and chat page over a run folder or an artifact."""

from __future__ import annotations


def register(sub) -> None:
    """Adds this module's commands to the `lmgolf` parser (not yet built)."""
