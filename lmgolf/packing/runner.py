"""The runner file: one self-contained Python file that loads an artifact and scores it.

Parameter Golf counts the bytes of the code that turns the artifact into a score. lmgolf counts a
single file that holds a small `main` and the lmgolf modules it needs: the closure of main's imports
(lmgolf.sources.closure), so nothing else is bundled and nothing it needs is left out. Each module is
bundled without its docstrings and comments (lmgolf.sources.stripped): the same program, fewer counted
bytes. Usage:

    python runner.py ARTIFACT DATA_FOLDER [--stride N] [--max-tokens N]

prints the validation result as JSON. The sources are served to `import lmgolf...` by a finder that
comes first on sys.meta_path, so the file runs on a machine without lmgolf (torch, numpy, tqdm,
zstandard and the tokenizer's own library are still needed: libraries do not count).

Two forms: "plain" (readable Python) and "compressed": the same program as an lzma + base85 string that
a one-line stub decompresses and executes, as record submissions do.
"""

from __future__ import annotations

import base64
import lzma
from pathlib import Path

from lmgolf.runfiles import atomic_write_bytes, check_replaceable
from lmgolf.sources import closure, is_package, module_file, stripped
from lmgolf.version import __version__

RUNNER_KINDS = ("plain", "compressed")

_FINDER = '''
import importlib.abc, importlib.util, sys


class _Bundled(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Serves the lmgolf modules held in SOURCES, ahead of any installed lmgolf."""

    def find_spec(self, name, path=None, target=None):
        if name in SOURCES:
            return importlib.util.spec_from_loader(name, self, is_package=name in PACKAGES)
        return None

    def create_module(self, spec):
        return None

    def exec_module(self, module):
        tail = "/__init__.py" if module.__name__ in PACKAGES else ".py"
        module.__file__ = "<runner>/" + module.__name__.replace(".", "/") + tail
        exec(compile(SOURCES[module.__name__], module.__file__, "exec"), module.__dict__)


sys.meta_path.insert(0, _Bundled())
'''

_MAIN = '''

def main(argv=None):
    import argparse, json
    from pathlib import Path
    from lmgolf.errors import LmgolfError
    parser = argparse.ArgumentParser(description="Score an lmgolf artifact on a data folder's validation split.")
    parser.add_argument("artifact")
    parser.add_argument("data", help="a data folder (val.bin and val_bytes.bin)")
    parser.add_argument("--stride", type=int, default=None)
    parser.add_argument("--max-tokens", type=int, default=None)
    args = parser.parse_args(argv)
    try:
        from lmgolf.packing.artifact import load_artifact
        from lmgolf.eval.evaluate import evaluate
        from lmgolf.data.shards import read_shard
        model, cfg, tokenizer, info = load_artifact(args.artifact)
        data = Path(args.data)
        tokens = read_shard(data / "val.bin", expect_fingerprint=tokenizer.fingerprint, expect_kind="tokens")
        nbytes = read_shard(data / "val_bytes.bin", expect_fingerprint=tokenizer.fingerprint, expect_kind="bytes")
        if len(tokens) != len(nbytes):
            raise LmgolfError(f"{data / 'val_bytes.bin'}: {len(nbytes)} byte counts for {len(tokens)} tokens")
        stride = args.stride or cfg.model.context
        if not 1 <= stride <= cfg.model.context:
            raise LmgolfError(f"--stride: must lie in [1, {cfg.model.context}]")
        result = evaluate(model, tokens, nbytes, cfg.model.context, stride=stride, max_tokens=args.max_tokens,
                          progress=False)
    except LmgolfError as e:
        print(f"runner: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps({**result.as_dict(), "artifact_bytes": info["artifact_bytes"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
'''


def bundled_modules() -> list[str]:
    """The lmgolf modules the runner file holds: everything its main can import."""
    return closure(_MAIN)


def _sources() -> dict[str, str]:
    return {name: stripped(module_file(name).read_text(encoding="utf-8")) for name in bundled_modules()}


def runner_source(kind: str = "plain") -> str:
    """The runner file's text."""
    if kind not in RUNNER_KINDS:
        raise ValueError(f"runner kind {kind!r} is not one of {', '.join(RUNNER_KINDS)}")
    body = (f'"""lmgolf {__version__} runner: python runner.py ARTIFACT DATA_FOLDER [--stride N] [--max-tokens N]"""\n'
            f"SOURCES = {_sources()!r}\nPACKAGES = {sorted(n for n in bundled_modules() if is_package(n))!r}\n" + _FINDER + _MAIN)
    if kind == "plain":
        return body
    packed = base64.b85encode(lzma.compress(body.encode("utf-8"), preset=9 | lzma.PRESET_EXTREME)).decode("ascii")
    return f'import base64,lzma\nexec(lzma.decompress(base64.b85decode("{packed}")))\n'


def runner_bytes(kind: str = "plain") -> int:
    return len(runner_source(kind).encode("utf-8"))


def is_runner(head: bytes) -> bool:
    """Whether a file's first bytes are those of a runner file (either kind, any lmgolf version)."""
    first = head.split(b"\n", 1)[0]
    return (first.startswith(b'"""lmgolf ') and b" runner: python runner.py " in first) or \
        head.startswith(b'import base64,lzma\nexec(lzma.decompress(base64.b85decode("')


def write_runner(path: str | Path, kind: str = "plain") -> int:
    """Writes the runner file atomically and returns its size in bytes. Replaces only an earlier runner
    file (lmgolf.runfiles.check_replaceable)."""
    check_replaceable(path, "runner file", is_runner)
    data = runner_source(kind).encode("utf-8")
    atomic_write_bytes(path, data)
    return len(data)
