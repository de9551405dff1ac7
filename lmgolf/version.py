"""The lmgolf version, a leaf every stage may import (the package root re-exports it)."""

__version__ = "0.1.0"
