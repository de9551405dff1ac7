"""Progress bars (tqdm on stderr) and JSONL metrics."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

from tqdm import tqdm


def progress_bar(total: float | None = None, desc: str = "", unit: str = "it", disable: bool = False) -> tqdm:
    """A bar on an interactive terminal; nothing when stderr is a file or a pipe (logs stay readable)."""
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=True if disable else None,
                file=sys.stderr, dynamic_ncols=True, leave=False, mininterval=0.5)


class MetricsLog:
    """Appends one JSON object per line; only the main process writes."""

    def __init__(self, path: str | Path | None):
        self.path = Path(path) if path else None

    def write(self, **record) -> None:
        if self.path is None:
            return
        record.setdefault("time", time.time())
        with open(self.path, "a") as f:
            f.write(json.dumps(record) + "\n")
