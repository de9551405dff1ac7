"""`lmgolf sweep` and `lmgolf rerun`: study files run as run folders, and a run repeated from its record."""

from __future__ import annotations


def register(sub) -> None:
    """Adds this module's commands to the `lmgolf` parser (not yet built)."""
