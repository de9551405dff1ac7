"""lmgolf's tokenizers as a Hugging Face `tokenizer.json` (PreTrainedTokenizerFast): the same ids for the same text.

byte and gpt2: byte-level BPE (no merges / GPT-2's merges). bpe, unigram and sentencepiece (SentencePiece models):
the same pieces, scores and byte fallback as a `tokenizers` BPE or Unigram model, the model's normalizer spec as
normalizers (space -> U+2581, dummy prefix, whitespace removal, its precompiled character map). char: BPE with no
merges (one id per character, <unk> for unknown ones). word: WordLevel over `\\S+|\\n`. Known differences are
listed in docs/export.md (a literal U+2581 reads as a space in HF, as in SentencePiece itself; lmgolf sends it
through byte fallback). Kinds or SentencePiece settings that do not map are refused in one line naming them.
"""

from __future__ import annotations

import importlib.util
import json

from lmgolf.data.tokenizers import SPACE_MARK, proto_fields
from lmgolf.errors import LmgolfError

TOKENIZER_KINDS = ("byte", "gpt2", "char", "word", "bpe", "unigram", "sentencepiece")
SP_UNIGRAM, SP_BPE = 1, 2  # TrainerSpec.model_type
WORD_BOS = "<bos> "  # with a space, so that no word of the text (`\\S+`) is read as BOS, nor collides with it
NEVER = -1e9  # the score of control and byte pieces in a Unigram export: never matched from text


def tokenizer_files(tokenizer) -> dict[str, str]:
    """tokenizer.json and tokenizer_config.json for PreTrainedTokenizerFast, giving tokenizer.encode's ids.

    No special tokens are registered, so text that spells a special token is encoded as ordinary text, as
    lmgolf does; the BOS id is in the vocabulary (decodable) and in config.json as bos_token_id."""
    if importlib.util.find_spec("tokenizers") is None:
        raise LmgolfError("tokenizer: exporting it needs the `tokenizers` package (pip install 'lmgolf[export]'), "
                          "or export with --no-tokenizer")
    makers = {"byte": byte_level, "gpt2": byte_level, "char": char_level, "word": word_level,
              "bpe": sentencepiece_model, "unigram": sentencepiece_model, "sentencepiece": sentencepiece_model}
    if tokenizer.kind not in makers:
        raise LmgolfError(f"tokenizer: the {tokenizer.kind!r} tokenizer has no Hugging Face export (only "
                          f"{', '.join(TOKENIZER_KINDS)}); export the model alone with --no-tokenizer")
    tok = makers[tokenizer.kind](tokenizer)
    config = {"tokenizer_class": "PreTrainedTokenizerFast", "model_max_length": 1 << 30,
              "clean_up_tokenization_spaces": False, "add_bos_token": False, "add_eos_token": False}
    return {"tokenizer.json": tok.to_str(), "tokenizer_config.json": json.dumps(config, indent=2) + "\n"}


def byte_level(tokenizer):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    from lmgolf.data.tokenizers import gpt2_byte_symbols
    if tokenizer.kind == "byte":
        symbol = {b: c for c, b in gpt2_byte_symbols().items()}
        vocab = {symbol[b]: b for b in range(256)}
        vocab["<bos>"] = tokenizer.bos_id
        bpe, use_regex = models.BPE(vocab=vocab, merges=[]), False
    else:
        vocab, merges = gpt2_vocab(tokenizer)
        bpe, use_regex = models.BPE(vocab=vocab, merges=merges), True
    tok = Tokenizer(bpe)
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=use_regex)
    tok.decoder = decoders.ByteLevel()
    return tok


def gpt2_vocab(tokenizer) -> tuple[dict[str, int], list[tuple[str, str]]]:
    """GPT-2's encoder.json and vocab.bpe, from the folder whose files the tokenizer was built from."""
    import hashlib

    from lmgolf.data.tokenizers import gpt2_folders
    for folder in gpt2_folders():
        encoder, merges = (folder / "encoder.json").read_bytes(), (folder / "vocab.bpe").read_bytes()
        if (hashlib.sha256(encoder).hexdigest(), hashlib.sha256(merges).hexdigest()) == tuple(tokenizer.hashes):
            lines = [line for line in merges.decode("utf-8").split("\n") if line and not line.startswith("#version")]
            return json.loads(encoder.decode("utf-8")), [tuple(line.split(" ")) for line in lines]
    raise LmgolfError("tokenizer: the GPT-2 encoder.json and vocab.bpe it was built from are not found; "
                      "export the model alone with --no-tokenizer")


def char_level(tokenizer):
    """One id per character: BPE without merges over the whole text; unknown characters are <unk> each."""
    from tokenizers import Tokenizer, decoders, models
    vocab = {"<bos>": tokenizer.bos_id, "<unk>": 1, **{c: i + 2 for i, c in enumerate(tokenizer.chars)}}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", fuse_unk=False))
    tok.decoder = decoders.Fuse()
    return tok


def word_level(tokenizer):
    """Words (`\\S+`) and newlines; other whitespace is dropped, unknown words are <unk>."""
    from tokenizers import Regex, Tokenizer, models, pre_tokenizers
    vocab = {WORD_BOS: 0, "<unk>": 1, "\n": 2, **{w: i + 3 for i, w in enumerate(tokenizer.words)}}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split(Regex(r"\S+|\n"), "removed", invert=True)
    return tok


# ---------------------------------------------------------------- SentencePiece


def sentencepiece_model(tokenizer):
    from tokenizers import Tokenizer, decoders
    spec = proto_fields(tokenizer.model)
    trainer, normalizer = proto_fields(spec.get(2, b"")), proto_fields(spec.get(3, b""))
    refuse = sentencepiece_refusal(tokenizer.kind, spec, trainer)
    if refuse:
        raise LmgolfError(f"tokenizer: the {tokenizer.kind!r} tokenizer's SentencePiece {refuse} has no exact "
                          "Hugging Face tokenizers equivalent here; export the model alone with --no-tokenizer")
    sp = tokenizer.processor
    model = (sentencepiece_bpe if trainer.get(3, SP_UNIGRAM) == SP_BPE else sentencepiece_unigram)(sp)
    tok = Tokenizer(model)
    tok.normalizer = sentencepiece_normalizer(normalizer)
    tok.decoder = decoders.Sequence([decoders.Replace(SPACE_MARK, " "), decoders.ByteFallback(), decoders.Fuse()]
                                    + ([decoders.Strip(" ", 1, 0)] if normalizer.get(3, 1) else []))
    return tok


def sentencepiece_refusal(kind: str, spec: dict, trainer: dict) -> str | None:
    """The first SentencePiece setting that the export cannot reproduce, named, or None."""
    model_type = trainer.get(3, SP_UNIGRAM)
    if model_type not in (SP_UNIGRAM, SP_BPE):
        return f"model_type {model_type} (word or char models)"
    if trainer.get(24, 0):
        return "treat_whitespace_as_suffix"
    if proto_fields(spec.get(3, b"")).get(5, 1) == 0:
        return "escape_whitespaces=false"
    if spec.get(5):
        return "denormalizer_spec"
    return None


def sentencepiece_normalizer(normalizer: dict):
    """The normalizer spec as `tokenizers` normalizers, in SentencePiece's order: the character map, then
    whitespace removal (strip, collapse runs of spaces), the dummy prefix, and spaces to U+2581."""
    from tokenizers import Regex, normalizers
    steps = []
    charsmap = normalizer.get(2)
    if isinstance(charsmap, bytes) and charsmap:
        steps.append(normalizers.Precompiled(charsmap))
    if normalizer.get(4, 1):  # remove_extra_whitespaces
        steps += [normalizers.Strip(left=True, right=True), normalizers.Replace(Regex(" {2,}"), " ")]
    if normalizer.get(3, 1):  # add_dummy_prefix
        steps.append(normalizers.Prepend(" "))
    steps.append(normalizers.Replace(" ", SPACE_MARK))
    return normalizers.Sequence(steps)


def special(sp, i: int) -> bool:
    return sp.is_control(i) or sp.is_unknown(i) or sp.is_byte(i) or sp.is_unused(i)


def sentencepiece_bpe(sp):
    """BPE over the same pieces: the merges that build each normal piece from two normal pieces, ranked by
    the piece's score (SentencePiece merges the highest-scoring pair first), byte fallback for the rest."""
    from tokenizers import models
    size = sp.get_piece_size()
    vocab = {sp.id_to_piece(i): i for i in range(size)}
    normal = {sp.id_to_piece(i) for i in range(size) if not special(sp, i)}
    ranked = []
    for i in range(size):
        piece = sp.id_to_piece(i)
        if piece not in normal or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in normal and right in normal:
                ranked.append((-sp.get_score(i), i, vocab[left], vocab[right], left, right))
    merges = [(left, right) for *_, left, right in sorted(ranked)]
    return models.BPE(vocab=vocab, merges=merges, unk_token=sp.id_to_piece(sp.unk_id()), fuse_unk=True,
                      byte_fallback=True)


def sentencepiece_unigram(sp):
    """Unigram over the same pieces and scores; control and byte pieces are never matched from text (as in
    SentencePiece, where only byte fallback produces byte pieces)."""
    from tokenizers import models
    vocab = [(sp.id_to_piece(i), NEVER if special(sp, i) else sp.get_score(i))
             for i in range(sp.get_piece_size())]
    return models.Unigram(vocab, unk_id=sp.unk_id(), byte_fallback=True)
