"""One writer per run folder: `train` holds an exclusive lock on RUN/.lock while it runs.

A second process that tries to train into the same folder (a second `lmgolf train --out`, a sweep started
twice) is refused with a one-line error naming the holder's pid, instead of both writing checkpoints and logs
over each other. The lock is flock(2)'s: the operating system drops it when its process ends, however it
ends, so a killed run leaves nothing to clean up (the file stays, holding the last holder's pid). Where
there is no flock (Windows), nothing is locked.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from lmgolf.errors import LmgolfError

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

LOCK_FILE = ".lock"


@contextlib.contextmanager
def run_folder_lock(folder: str | Path):
    """Holds RUN/.lock (making the folder if need be) while the block runs; refuses if another process holds it."""
    folder = Path(folder)
    if fcntl is None:
        yield
        return
    try:
        folder.mkdir(parents=True, exist_ok=True)
        f = open(folder / LOCK_FILE, "a+", encoding="ascii")
    except OSError as e:
        raise LmgolfError(f"{folder}: cannot make its lock file ({e.strerror or e})") from None
    with f:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            f.seek(0)
            holder = f.read(20).strip()
            by = f"process {holder}" if holder.isdigit() else "another process"
            raise LmgolfError(f"{folder}: {by} is training into this run folder; wait for it to end or choose "
                              f"another --out") from None
        f.seek(0)
        f.truncate()
        f.write(f"{os.getpid()}\n")
        f.flush()
        yield  # closing the file drops the lock
