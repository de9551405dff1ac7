"""lmgolf: build the best small language model under a budget."""

__version__ = "0.1.0"
