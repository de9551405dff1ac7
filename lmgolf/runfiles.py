"""Atomic file writes and checksums: every file lmgolf writes appears whole or not at all.

A file is written as `.NAME.PID.XXXXXXXX.tmp` beside it and renamed into place. A process killed
before the rename leaves that temp file; the next successful write of the same NAME removes the temp
files of NAME whose process (PID) is gone (remove_stale_temps), so nothing is stranded for long.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

from lmgolf.errors import LmgolfError


def use_default_permissions(path: str | Path) -> None:
    """Give a file or folder made by mkstemp/mkdtemp (private, 0600/0700) the permissions the umask asks for."""
    mask = os.umask(0)
    os.umask(mask)
    os.chmod(path, (0o777 if os.path.isdir(path) else 0o666) & ~mask)


_TEMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.[A-Za-z0-9_]+\.(?:tmp|old)$")


def temp_prefix(name: str) -> str:
    """The prefix of this process's temp files and folders for NAME (with mkstemp/mkdtemp)."""
    return f".{name}.{os.getpid()}."


def is_temp_name(entry: str) -> bool:
    """Whether a folder entry is a temp file or folder of this module's naming (temp_prefix)."""
    return _TEMP.match(entry) is not None


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, OSError):
        return True  # someone else's live process (or unknowable): leave its files alone
    return True


def remove_stale_temps(path: str | Path, suffixes: tuple[str, ...] = (".tmp",)) -> None:
    """Removes the temp files and folders for `path` (beside it) left by processes that are gone."""
    path = Path(path)
    try:
        entries = list(path.parent.iterdir())
    except OSError:
        return
    for entry in entries:
        m = _TEMP.match(entry.name)
        if m is None or m["name"] != path.name or not entry.name.endswith(suffixes) or _alive(int(m["pid"])):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)


def check_replaceable(path: str | Path, what: str, recognize) -> None:
    """Refuses (one-line LmgolfError) to write the file `what` at path when something there is not an
    earlier one (recognize(first bytes) is false), when path is a folder, or when it lies in a run's
    checkpoint folder."""
    path = Path(path)
    folder = path.parent
    if folder.name in ("checkpoint", "checkpoint.tmp", "checkpoint.old") and (
            (folder / "state.json").exists() or (folder.parent / "run.json").exists()):
        raise LmgolfError(f"{path}: inside a run's checkpoint folder; refusing to write the {what} there")
    if path.is_dir():
        raise LmgolfError(f"{path}: is a folder; give a file path for the {what}")
    if not path.exists() and not path.is_symlink():
        return
    try:
        with open(path, "rb") as f:
            head = f.read(256)
    except OSError as e:
        raise LmgolfError(f"{path}: exists and cannot be read ({e.strerror or e}); refusing to replace it") from None
    if not path.is_file() or not recognize(head):
        raise LmgolfError(f"{path}: exists and is not an lmgolf {what}; refusing to replace it")


def atomic_write_bytes(path: str | Path, data: bytes) -> None:
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=temp_prefix(path.name), suffix=".tmp")
    except OSError as e:
        raise LmgolfError(f"{path}: cannot write here ({e.strerror or e})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        use_default_permissions(tmp)
        os.replace(tmp, path)
    except IsADirectoryError:
        Path(tmp).unlink(missing_ok=True)
        raise LmgolfError(f"{path}: is a folder; cannot write a file there") from None
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    remove_stale_temps(path)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def read_json_object(path: str | Path, missing: str) -> dict:
    """A JSON object from a file, or a one-line error naming the file: `missing` says what its absence means."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise LmgolfError(f"{path}: missing; {missing}") from None
    except (OSError, UnicodeDecodeError) as error:
        raise LmgolfError(f"{path}: cannot read ({getattr(error, 'strerror', None) or error})") from None
    try:
        value = json.loads(text)
    except json.JSONDecodeError as error:
        raise LmgolfError(f"{path}: not valid JSON ({error.msg}, line {error.lineno}, column {error.colno})") from None
    if not isinstance(value, dict):
        raise LmgolfError(f"{path}: expected a JSON object, got {type(value).__name__}")
    return value
