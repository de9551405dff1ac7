"""`lmgolf plot`: figures from the results store and run folders."""

from __future__ import annotations


def register(sub) -> None:
    """Adds this module's commands to the `lmgolf` parser (not yet built)."""
