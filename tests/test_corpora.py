import functools
import gzip
import hashlib
import http.server
import json
import os
import threading
from pathlib import Path

import pytest

from lmgolf.data import corpora
from lmgolf.data.corpora import KNOWN_CORPORA, REMOTE_CORPORA, RemoteFile, fetch_corpus, load_corpus
from lmgolf.errors import LmgolfError


def shared_data() -> Path | None:
    value = os.environ.get("LMGOLF_DATA_DIR")
    return Path(value) if value and Path(value).is_dir() else None


def corpus_root_or_skip(name: str) -> Path:
    root = shared_data()
    if root is None or not (root / name).is_dir():
        pytest.skip(f"LMGOLF_DATA_DIR is unset or has no {name}/ folder")
    return root


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Keep the user's fetch cache out of every test."""
    monkeypatch.setenv("LMGOLF_CACHE", str(tmp_path / "cache"))


def utf8(documents):
    return sum(len(document.encode()) for document in documents)


# ---------------------------------------------------------------- named corpora

FOLDER_CORPORA = [name for name in KNOWN_CORPORA if name != "stdlib-docs"]


@pytest.mark.parametrize("name", FOLDER_CORPORA)
def test_named_corpus_loads_with_disjoint_deterministic_split(name):
    root = corpus_root_or_skip(name)
    corpus = load_corpus(name, data_dir=str(root))
    assert corpus.name == name and corpus.train and corpus.val and corpus.split
    assert all(set(source) >= {"path", "bytes", "sha256"} for source in corpus.sources)
    assert not set(corpus.train) & set(corpus.val)
    again = load_corpus(name, data_dir=str(root))
    assert again.train == corpus.train and again.val == corpus.val


def test_tinyshakespeare_split_is_90_10_of_characters():
    root = corpus_root_or_skip("tinyshakespeare")
    corpus = load_corpus("tinyshakespeare", data_dir=str(root))
    text = (root / "tinyshakespeare" / "input.txt").read_text()
    assert len(corpus.train) == len(corpus.val) == 1
    assert corpus.train[0] + corpus.val[0] == text
    assert len(corpus.train[0]) == int(len(text) * 0.9) == 1_003_854
    assert corpus.sources[0]["sha256"] == REMOTE_CORPORA["tinyshakespeare"][0].sha256
    assert corpus.val_fraction is None


def test_hash_split_counts_on_a_named_web_corpus():
    root = corpus_root_or_skip("c4-sample")
    corpus = load_corpus("c4-sample", data_dir=str(root), val_fraction=0.1, seed=1)
    assert len(corpus.train) + len(corpus.val) == 1970
    assert 0.06 < len(corpus.val) / 1970 < 0.14
    other_seed = load_corpus("c4-sample", data_dir=str(root), val_fraction=0.1, seed=2)
    assert other_seed.val != corpus.val


def test_env_var_names_the_corpus_folder(monkeypatch):
    root = corpus_root_or_skip("ptb")
    monkeypatch.setenv("LMGOLF_DATA_DIR", str(root))
    corpus = load_corpus("ptb")
    assert corpus.val[0] == (root / "ptb" / "ptb.valid.txt").read_text()


def test_stdlib_docs_needs_no_data_dir_and_is_deterministic(monkeypatch):
    monkeypatch.delenv("LMGOLF_DATA_DIR", raising=False)
    corpus = load_corpus("stdlib-docs")
    assert utf8(corpus.train) + utf8(corpus.val) > 1_000_000
    assert len(corpus.val) >= 1 and not set(corpus.train) & set(corpus.val)
    assert "json" in " ".join(corpus.train + corpus.val)
    corpora.stdlib_documents.cache_clear()
    rebuilt = load_corpus("stdlib-docs")
    assert rebuilt.train == corpus.train and rebuilt.val == corpus.val
    assert rebuilt.sources[0]["sha256"] == corpus.sources[0]["sha256"]


def test_unknown_name_lists_known_names():
    with pytest.raises(LmgolfError, match="not-a-corpus: neither a known corpus .*tinyshakespeare.*LMGOLF_DATA_DIR"):
        load_corpus("not-a-corpus")


def test_named_corpus_without_its_folder(tmp_path, monkeypatch):
    monkeypatch.delenv("LMGOLF_DATA_DIR", raising=False)
    with pytest.raises(LmgolfError, match="ptb: corpus folder not found.*LMGOLF_DATA_DIR"):
        load_corpus("ptb", data_dir=str(tmp_path))


def test_named_corpus_reads_plain_or_gzipped_files(tmp_path):
    folder = tmp_path / "wikitext-2"
    folder.mkdir()
    with gzip.open(folder / "train.txt.gz", "wt", encoding="utf-8") as file:
        file.write(" = Heading = \n train text \n")
    (folder / "valid.txt").write_text(" valid text \n")
    corpus = load_corpus("wikitext-2", data_dir=str(tmp_path))
    assert corpus.train == [" = Heading = \n train text \n"] and corpus.val == [" valid text \n"]


# ---------------------------------------------------------------- custom corpora


def test_txt_file_is_one_document_split_by_characters(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("x" * 900 + "y" * 100)
    corpus = load_corpus(str(path), val_fraction=0.1)
    assert corpus.train == ["x" * 900] and corpus.val == ["y" * 100]
    assert corpus.sources == [{"path": str(path), "bytes": 1000,
                               "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}]


def test_txt_gz_with_endoftext_separators(tmp_path):
    path = tmp_path / "stories.txt.gz"
    stories = [f"Story number {i}.\nThe end." for i in range(60)]
    with gzip.open(path, "wt", encoding="utf-8") as file:
        file.write("\n<|endoftext|>\n".join(stories) + "\n<|endoftext|>\n")
    corpus = load_corpus(str(path), val_fraction=0.2, seed=3)
    assert sorted(corpus.train + corpus.val) == sorted(stories)
    assert 1 <= len(corpus.val) < 60


def test_folder_is_one_document_per_file(tmp_path):
    for i in range(30):
        (tmp_path / f"doc{i:02d}.txt").write_text(f"document {i}\n")
    with gzip.open(tmp_path / "zz.txt.gz", "wt") as file:
        file.write("gzipped document\n")
    (tmp_path / "notes.md").write_text("ignored")
    corpus = load_corpus(str(tmp_path))
    documents = corpus.train + corpus.val
    assert sorted(documents) == sorted([f"document {i}\n" for i in range(30)] + ["gzipped document\n"])
    assert len(corpus.sources) == 31 and corpus.val and corpus.train


def test_hash_split_keeps_a_document_on_each_side(tmp_path):
    (tmp_path / "a.txt").write_text("alpha")
    (tmp_path / "b.txt").write_text("beta")
    for fraction in (0.001, 0.999):
        corpus = load_corpus(str(tmp_path), val_fraction=fraction)
        assert len(corpus.train) == len(corpus.val) == 1


@pytest.mark.parametrize("gz", [False, True])
def test_jsonl_one_document_per_line(tmp_path, gz):
    records = [{"text": f"line {i} \u2028 with a separator", "id": i} for i in range(25)]
    body = "\n".join(json.dumps(record, ensure_ascii=False) for record in records) + "\n\n"
    path = tmp_path / ("d.jsonl.gz" if gz else "d.jsonl")
    if gz:
        path.write_bytes(gzip.compress(body.encode()))
    else:
        path.write_text(body)
    corpus = load_corpus(str(path))
    assert sorted(corpus.train + corpus.val) == sorted(record["text"] for record in records)


def test_jsonl_line_without_text_names_file_and_line(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_text('{"text": "ok"}\n{"body": "no text"}\n')
    with pytest.raises(LmgolfError, match=r"d.jsonl: line 2: no \"text\" string field"):
        load_corpus(str(path))
    path.write_text('{"text": "ok"}\n{"text": \n')
    with pytest.raises(LmgolfError, match="d.jsonl: line 2: not valid JSON"):
        load_corpus(str(path))


def test_missing_empty_and_invalid_inputs(tmp_path):
    with pytest.raises(LmgolfError, match="missing.txt: neither a known corpus"):
        load_corpus(str(tmp_path / "missing.txt"))
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    with pytest.raises(LmgolfError, match="empty.txt: corpus has no text"):
        load_corpus(str(empty))
    (tmp_path / "emptydir").mkdir()
    with pytest.raises(LmgolfError, match="emptydir: corpus has no text"):
        load_corpus(str(tmp_path / "emptydir"))
    latin1 = tmp_path / "latin1.txt"
    latin1.write_bytes("café".encode("latin-1"))
    with pytest.raises(LmgolfError, match="latin1.txt: not valid UTF-8"):
        load_corpus(str(latin1))
    not_gzip = tmp_path / "fake.txt.gz"
    not_gzip.write_bytes(b"plain")
    with pytest.raises(LmgolfError, match="fake.txt.gz: not a valid gzip file"):
        load_corpus(str(not_gzip))
    other = tmp_path / "table.csv"
    other.write_text("a,b")
    with pytest.raises(LmgolfError, match="table.csv: unsupported file type"):
        load_corpus(str(other))
    with pytest.raises(LmgolfError, match="val_fraction"):
        load_corpus(str(latin1), val_fraction=1.5)


# ---------------------------------------------------------------- fetching from a local server


@pytest.fixture
def mirror(tmp_path):
    """An HTTP server on 127.0.0.1 serving a temp folder; yields (folder, base_url)."""
    folder = tmp_path / "mirror"
    folder.mkdir()

    class QuietHandler(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(folder)))
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture
def tiny_registry(monkeypatch):
    content = b"To be, or not to be, that is the question.\n" * 50
    remote = RemoteFile("input.txt", "https://example.invalid/input.txt", hashlib.sha256(content).hexdigest(),
                        len(content))
    monkeypatch.setitem(REMOTE_CORPORA, "tinyshakespeare", (remote,))
    return content


def test_fetch_downloads_verifies_and_is_loadable(mirror, tiny_registry, tmp_path, monkeypatch):
    folder, base_url = mirror
    (folder / "tinyshakespeare").mkdir()
    (folder / "tinyshakespeare" / "input.txt").write_bytes(tiny_registry)
    cache = tmp_path / "cache"
    fetched = fetch_corpus("tinyshakespeare", cache_dir=cache, base_url=base_url)
    assert fetched == cache / "corpora" / "tinyshakespeare"
    assert (fetched / "input.txt").read_bytes() == tiny_registry
    assert [path.name for path in fetched.iterdir()] == ["input.txt"]
    # already there and verified: no second download (the mirror is gone)
    (folder / "tinyshakespeare" / "input.txt").unlink()
    assert fetch_corpus("tinyshakespeare", cache_dir=cache, base_url=base_url) == fetched
    # the fetch cache is searched for named corpora
    monkeypatch.delenv("LMGOLF_DATA_DIR", raising=False)
    corpus = load_corpus("tinyshakespeare")
    assert corpus.train[0] + corpus.val[0] == tiny_registry.decode()


def test_fetch_checksum_mismatch_leaves_nothing(mirror, tiny_registry, tmp_path):
    folder, base_url = mirror
    (folder / "tinyshakespeare").mkdir()
    (folder / "tinyshakespeare" / "input.txt").write_bytes(tiny_registry.replace(b"question", b"answer!!"))
    cache = tmp_path / "cache"
    with pytest.raises(LmgolfError, match="input.txt: sha256 .* does not match the pinned"):
        fetch_corpus("tinyshakespeare", cache_dir=cache, base_url=base_url)
    assert list((cache / "corpora" / "tinyshakespeare").iterdir()) == []


def test_fetch_oversized_and_missing_files(mirror, tiny_registry, tmp_path):
    folder, base_url = mirror
    (folder / "tinyshakespeare").mkdir()
    (folder / "tinyshakespeare" / "input.txt").write_bytes(tiny_registry * 2)
    cache = tmp_path / "cache"
    with pytest.raises(LmgolfError, match="larger than the pinned"):
        fetch_corpus("tinyshakespeare", cache_dir=cache, base_url=base_url)
    (folder / "tinyshakespeare" / "input.txt").unlink()
    with pytest.raises(LmgolfError, match="download failed"):
        fetch_corpus("tinyshakespeare", cache_dir=cache, base_url=base_url)
    assert list((cache / "corpora" / "tinyshakespeare").iterdir()) == []


def test_fetch_unknown_name(tmp_path):
    with pytest.raises(LmgolfError, match="c4-sample: cannot be fetched"):
        fetch_corpus("c4-sample", cache_dir=tmp_path)


def test_registry_pins_match_the_shared_copies():
    root = shared_data()
    if root is None:
        pytest.skip("LMGOLF_DATA_DIR is not set to a corpus folder")
    for name, remotes in REMOTE_CORPORA.items():
        for remote in remotes:
            candidates = [root / name / remote.name, root / name / f"{remote.name}.gz"]
            path = next((candidate for candidate in candidates if candidate.is_file()), None)
            if path is None:
                continue
            data = path.read_bytes()
            data = gzip.decompress(data) if path.name.endswith(".gz") else data
            assert (hashlib.sha256(data).hexdigest(), len(data)) == (remote.sha256, remote.size), remote.name
