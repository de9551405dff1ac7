"""What a run folder records so the run can be repeated from it: code, libraries, hardware, command."""

from __future__ import annotations

import hashlib
import os
import platform
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import torch

from lmgolf.device import cpu_fields
from lmgolf.version import __version__

PACKAGE_DIR = Path(__file__).parent


def code_version() -> dict:
    """The git commit when run from a checkout, and always a hash of the package's source files."""
    digest = hashlib.sha256()
    for path in sorted(PACKAGE_DIR.rglob("*")):
        if path.suffix in (".py", ".json") and path.is_file():
            digest.update(path.relative_to(PACKAGE_DIR).as_posix().encode())
            digest.update(path.read_bytes())
    info = {"lmgolf": __version__, "source_sha256": digest.hexdigest()}
    try:
        out = subprocess.run(["git", "-C", str(PACKAGE_DIR), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5)
        if out.returncode == 0:
            info["git_commit"] = out.stdout.strip()
            dirty = subprocess.run(["git", "-C", str(PACKAGE_DIR), "status", "--porcelain", "--", "."],
                                   capture_output=True, text=True, timeout=5)
            info["git_dirty"] = bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def library_versions() -> dict:
    names = ["torch", "numpy", "safetensors", "sentencepiece", "tiktoken", "zstandard", "tqdm"]
    versions = {"python": sys.version.split()[0]}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> dict:
    info = {"platform": platform.platform(), "machine": platform.machine(), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "cpu": cpu_fields().get("model name") or platform.processor()}
    if torch.cuda.is_available():
        info["cuda"] = torch.version.cuda
        info["gpus"] = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
    return info


def run_record(argv: list[str] | None = None) -> dict:
    return {"command": argv if argv is not None else sys.argv, "code": code_version(),
            "libraries": library_versions(), "hardware": hardware()}
