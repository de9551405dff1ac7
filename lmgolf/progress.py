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

    def close(self) -> None:
        """Nothing to release here (each write opens and closes the file); a TensorBoard view has a writer."""

    def size(self) -> int | None:
        """The bytes written so far (recorded in a checkpoint, to cut the log back to it on resume)."""
        if self.path is None:
            return None
        try:
            return self.path.stat().st_size
        except FileNotFoundError:
            return 0

    def rewind(self, size: int | None, step: int) -> None:
        """Drops what was logged after a checkpoint, so that a resumed run logs each step once: the log is
        cut back (atomically) to the `size` bytes it had at the checkpoint, or, without a usable size, to
        the lines of steps up to `step` (a torn last line is dropped too)."""
        if self.path is None or not self.path.is_file():
            return
        from lmgolf.runfiles import atomic_write_bytes
        data = self.path.read_bytes()
        if isinstance(size, int) and not isinstance(size, bool) and 0 <= size <= len(data) \
                and (size == 0 or data[size - 1:size] == b"\n"):
            kept = data[:size]
        else:
            lines = []
            for line in data.splitlines(keepends=True):
                try:
                    record = json.loads(line)
                except ValueError:
                    continue  # torn by the interruption
                if not isinstance(record, dict) or not isinstance(record.get("step"), int) or record["step"] <= step:
                    lines.append(line if line.endswith(b"\n") else line + b"\n")
            kept = b"".join(lines)
        if kept != data:
            atomic_write_bytes(self.path, kept)
