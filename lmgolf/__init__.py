"""lmgolf: build the best small language model under a budget.

The Python API (lmgolf.api: load, score, train, pack, generate) is re-exported here lazily, so that
importing one stage, as the runner file does, loads nothing else.
"""

import importlib

from lmgolf.version import __version__  # noqa: F401

_API = ("load", "score", "train", "pack", "generate", "Run")


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module("lmgolf.api"), name)
    raise AttributeError(f"module 'lmgolf' has no attribute {name!r}")


def __dir__():
    return sorted([*globals(), *_API])
