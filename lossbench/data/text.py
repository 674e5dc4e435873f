"""Text corpora for the ``lm`` family: one file split by characters, tokenised per split.

A corpus is one UTF-8 file (Tiny Shakespeare: ``input.txt``) found through
``lossbench.data.locate``. It is cut by characters, before tokenising, into the first 90% for
training, the next 5% for validation and the last 5% for test, so no token crosses a split
boundary and every tokenisation scores the same test characters.

Tokenisers: ``char`` (the sorted set of the training split's characters; a character absent
from it is an error) and ``bpe`` (byte-level BPE trained with Hugging Face ``tokenizers`` on the
training split only, lossless: decoding gives the text back). A BPE tokeniser is cached as JSON
under ``<data home>/../tokenizers/`` by a hash of the corpus and the settings, and the run
records that hash.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np

from lossbench.data.locate import data_home, find_dataset, missing_data
from lossbench.errors import UserError, require

CORPORA: dict[str, str] = {"tinyshakespeare": "input.txt"}
"""Corpus name -> its text file inside the data set's folder."""

SPLITS = (0.90, 0.05, 0.05)
"""Train, validation and test fractions of the corpus's characters, in that order."""

BPE_VERSION = 1
"""Part of the cache hash: bump when the BPE recipe below changes."""


@dataclass(frozen=True)
class TokenisedSplit:
    """One split's token ids and, per token, the character offset where it ends."""

    ids: np.ndarray
    """Token ids, int64 [M]."""
    ends: np.ndarray
    """``ends[i]``: the character offset (in the split's text) just after token ``i``; the
    characters covered by tokens ``a..b`` (inclusive) are ``ends[b] - ends[a - 1]``."""
    chars: int


@dataclass(frozen=True)
class Corpus:
    """A tokenised corpus: the three splits, the vocabulary and how to decode ids."""

    train: TokenisedSplit
    val: TokenisedSplit
    test: TokenisedSplit
    vocab_size: int
    decode: Callable[[list[int]], str]
    info: dict[str, Any]


def split_text(text: str) -> tuple[str, str, str]:
    """First 90% / next 5% / last 5% of the characters."""
    n = len(text)
    a, b = int(SPLITS[0] * n), int((SPLITS[0] + SPLITS[1]) * n)
    return text[:a], text[a:b], text[b:]


def corpus_path(name: str, dir: str = "") -> Path:
    """The corpus file, looked up in the standard order (a one-line error if absent)."""
    require(name in CORPORA, f"unknown data.corpus '{name}'; accepted: {', '.join(CORPORA)}")
    root = find_dataset(name, [CORPORA[name]], dir)
    if root is None:
        raise missing_data(name, [CORPORA[name]], dir)
    return root / CORPORA[name]


# --------------------------------------------------------------------------------------------
# Tokenisers.
# --------------------------------------------------------------------------------------------


def char_tokenise(train: str, val: str, test: str) -> Corpus:
    """Character level: the vocabulary is the training split's sorted characters."""
    alphabet = sorted(set(train))
    lookup = {c: i for i, c in enumerate(alphabet)}
    table = np.full(max(map(ord, alphabet)) + 1, -1, dtype=np.int64)
    table[[ord(c) for c in alphabet]] = np.arange(len(alphabet))

    def encode(text: str) -> TokenisedSplit:
        unseen = sorted(set(text) - lookup.keys())
        require(not unseen, f"characters {unseen!r} are not in the training split's "
                            "alphabet; the char tokeniser cannot encode them")
        codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32).astype(np.int64)
        return TokenisedSplit(table[codes], np.arange(1, len(text) + 1), len(text))

    return Corpus(encode(train), encode(val), encode(test), len(alphabet),
                  lambda ids: "".join(alphabet[i] for i in ids),
                  {"tokenizer": "char", "vocab_size": len(alphabet)})


def tokenizer_cache_dir() -> Path:
    """Where trained tokenisers are kept: ``tokenizers/`` beside the data home."""
    return data_home().parent / "tokenizers"


def bpe_key(train: str, vocab_size: int) -> str:
    """Hash of the training text and the BPE settings: the cache key the run records."""
    h = hashlib.sha256(train.encode())
    h.update(json.dumps({"vocab_size": vocab_size, "recipe": BPE_VERSION}).encode())
    return h.hexdigest()[:16]


def _tokenizers() -> Any:
    try:
        import tokenizers
    except ImportError:
        raise UserError("data.tokenizer = \"bpe\" needs Hugging Face tokenizers: pip install "
                        "'lossbench[lm]' (or pip install tokenizers)") from None
    return tokenizers


def train_bpe(train: str, vocab_size: int) -> Any:
    """Byte-level BPE (GPT-2's pre-tokenisation, the 256-byte initial alphabet, no special
    tokens) trained on ``train`` only. The vocabulary stops short of ``vocab_size`` when the
    corpus has no more pairs to merge (Tiny Shakespeare: about 20k)."""
    tk = _tokenizers()
    tokenizer = tk.Tokenizer(tk.models.BPE())
    tokenizer.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = tk.decoders.ByteLevel()
    trainer = tk.trainers.BpeTrainer(
        vocab_size=vocab_size, initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[], show_progress=False)
    tokenizer.train_from_iterator([train], trainer=trainer)
    return tokenizer


def cached_bpe(train: str, vocab_size: int) -> tuple[Any, str, Path]:
    """The BPE tokeniser of (``train``, ``vocab_size``) from the cache, trained and saved on a
    miss (written to a temporary file, then renamed: concurrent runs never read half a file)."""
    tk = _tokenizers()
    key = bpe_key(train, vocab_size)
    path = tokenizer_cache_dir() / f"bpe-{vocab_size}-{key}.json"
    if path.is_file():
        return tk.Tokenizer.from_file(str(path)), key, path
    tokenizer = train_bpe(train, vocab_size)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tokenizer.save(str(tmp))
        tmp.replace(path)
    except OSError:
        pass  # an unwritable cache costs a retrain next time, never the run
    return tokenizer, key, path


def bpe_tokenise(train: str, val: str, test: str, vocab_size: int) -> Corpus:
    """Byte-level BPE trained on the training split; token ends from the encoder's offsets."""
    tokenizer, key, path = cached_bpe(train, vocab_size)

    def encode(text: str) -> TokenisedSplit:
        enc = tokenizer.encode(text)
        ends = np.array([end for _, end in enc.offsets], dtype=np.int64)
        return TokenisedSplit(np.array(enc.ids, dtype=np.int64), ends, len(text))

    size = int(tokenizer.get_vocab_size())
    return Corpus(encode(train), encode(val), encode(test), size,
                  lambda ids: str(tokenizer.decode(list(ids))),
                  {"tokenizer": "bpe", "vocab_size": size, "bpe_requested_vocab": vocab_size,
                   "bpe_hash": key, "bpe_file": path.name})


# --------------------------------------------------------------------------------------------
# Loading.
# --------------------------------------------------------------------------------------------


@cache
def _load(path: str, mtime_ns: int, tokenizer: str, vocab_size: int) -> Corpus:
    text = Path(path).read_text(encoding="utf-8")
    train, val, test = split_text(text)
    corpus = (char_tokenise(train, val, test) if tokenizer == "char"
              else bpe_tokenise(train, val, test, vocab_size))
    for part in (corpus.train, corpus.val, corpus.test):
        part.ids.setflags(write=False)
    sha = hashlib.sha256(text.encode()).hexdigest()[:16]
    return Corpus(corpus.train, corpus.val, corpus.test, corpus.vocab_size, corpus.decode,
                  corpus.info | {"corpus_sha256": sha, "corpus_chars": len(text),
                                 "split_chars": [len(train), len(val), len(test)]})


TOKENIZERS = ("char", "bpe")


def load_corpus(name: str, tokenizer: str, vocab_size: int = 0, dir: str = "") -> Corpus:
    """The tokenised corpus (kept in-process: a grid runs every loss and seed on the same one;
    the file's modification time is part of the key, so an edited file is read again)."""
    require(tokenizer in TOKENIZERS,
            f"unknown data.tokenizer '{tokenizer}'; accepted: {', '.join(TOKENIZERS)}")
    if tokenizer == "bpe":
        require(vocab_size >= 257, f"data.vocab_size must be >= 257 for bpe (256 bytes + one "
                                   f"merge), got {vocab_size}")
    path = corpus_path(name, dir)
    return _load(str(path), path.stat().st_mtime_ns, tokenizer,
                 vocab_size if tokenizer == "bpe" else 0)
