"""Tokenizers for GLIDE-style text-to-image pretraining.

Two kinds share one interface (``encode``, ``padded_tokens_and_mask``, ``batch``, ``vocab_size``,
``to_dict``):

* :class:`WordTokenizer`: a small word-level vocabulary built from the captions of a corpus (the
  synthetic world's captions use a few dozen words). It is saved as JSON beside each run and inside
  the model files, so sampling uses exactly the vocabulary the model was trained with.
* :class:`GPT2BPETokenizer`: GLIDE's GPT-2 byte-level BPE (50,257 entries), for the official GLIDE
  weights. Its two vocabulary files ship with ``openai/glide-text2im``
  (``glide_text2im/tokenizer/encoder.json.gz`` and ``vocab.bpe.gz``) and are never downloaded here.

Both follow GLIDE's conventions: text is lowercased, no BOS/EOS token is added, sequences are
truncated or padded to ``text_ctx`` tokens, and the mask is True for real tokens (the network swaps
padded slots for its learned ``padding_embedding``). An empty caption is the unconditional input.
"""

from __future__ import annotations

import gzip
import importlib.util
import json
import os
import re
from collections.abc import Iterable
from functools import lru_cache
from pathlib import Path

import torch

from piti.errors import ConfigError, MissingWeightsError

__all__ = ["WordTokenizer", "GPT2BPETokenizer", "tokenizer_from_dict", "load_tokenizer", "BPE_ENV_VAR"]

# Where GLIDE's BPE files are looked for when no path is given.
BPE_ENV_VAR = "PITI_GLIDE_TOKENIZER_DIR"
BPE_FILES = ("encoder.json.gz", "vocab.bpe.gz")


def _pad(tokens: list[int], text_ctx: int, pad_id: int) -> tuple[list[int], list[bool]]:
    """Truncate/pad to ``text_ctx``; the mask is True for real tokens (GLIDE ``padded_tokens_and_mask``)."""
    tokens = list(tokens)[:text_ctx]
    n = len(tokens)
    return tokens + [pad_id] * (text_ctx - n), [True] * n + [False] * (text_ctx - n)


class _Tokenizer:
    """The shared part: padding and batching on top of a subclass's ``encode``."""

    pad_id: int

    def encode(self, text: str) -> list[int]:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    @property
    def vocab_size(self) -> int:  # pragma: no cover - every subclass overrides it
        raise NotImplementedError

    def padded_tokens_and_mask(self, tokens: list[int], text_ctx: int) -> tuple[list[int], list[bool]]:
        """Truncate or pad ``tokens`` to ``text_ctx``; returns (ids, mask), mask True for real tokens."""
        return _pad(tokens, text_ctx, self.pad_id)

    def batch(self, captions: Iterable[str], text_ctx: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Encode captions into ``tokens`` (B, text_ctx) long and ``mask`` (B, text_ctx) bool."""
        rows = [self.padded_tokens_and_mask(self.encode(c), text_ctx) for c in captions]
        tokens = torch.tensor([r[0] for r in rows], dtype=torch.long).view(-1, text_ctx)
        mask = torch.tensor([r[1] for r in rows], dtype=torch.bool).view(-1, text_ctx)
        return tokens, mask

    def save(self, path: str | os.PathLike) -> None:
        """Write ``to_dict()`` as JSON, atomically."""
        from piti.fileio import atomic_write

        text = json.dumps(self.to_dict(), indent=1)
        atomic_write(path, lambda tmp: Path(tmp).write_text(text))


# --------------------------------------------------------------------------------------------------
# Word-level tokenizer

# Words (letters, digits, inner apostrophes/hyphens) or single punctuation marks.
_WORD_RE = re.compile(r"[^\W_]+(?:['-][^\W_]+)*|[^\w\s]")


class WordTokenizer(_Tokenizer):
    """Word-level tokenizer over a fixed vocabulary: id 0 is padding, id 1 unknown words.

    Build it with :meth:`from_captions`; unknown words at encoding time map to ``<unk>``.
    """

    PAD, UNK = "<pad>", "<unk>"

    def __init__(self, words: Iterable[str]):
        words = list(words)
        if len(set(words)) != len(words) or {self.PAD, self.UNK} & set(words):
            raise ConfigError("WordTokenizer: the word list must be unique and must not contain <pad> or <unk>")
        self.words = words
        self.itos = [self.PAD, self.UNK] + words
        self.stoi = {w: i for i, w in enumerate(self.itos)}
        self.pad_id, self.unk_id = 0, 1

    @staticmethod
    def split(text: str) -> list[str]:
        """Lowercase ``text`` and split it into words and punctuation marks."""
        return _WORD_RE.findall(text.lower())

    @classmethod
    def from_captions(cls, captions: Iterable[str]) -> WordTokenizer:
        """The vocabulary of every word in ``captions``, sorted (so it does not depend on their order)."""
        return cls(sorted({w for c in captions for w in cls.split(c)}))

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        return [self.stoi.get(w, self.unk_id) for w in self.split(text)]

    def decode(self, ids: Iterable[int]) -> str:
        """Words of ``ids`` joined by spaces (padding dropped)."""
        return " ".join(self.itos[i] for i in ids if i != self.pad_id)

    def to_dict(self) -> dict:
        return {"kind": "word", "words": self.words}


# --------------------------------------------------------------------------------------------------
# GLIDE's GPT-2 byte-level BPE


@lru_cache(maxsize=1)
def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable unicode characters.

    Printable Latin-1 bytes map to themselves; the others are shifted to code points from 256 up.
    """
    keep = (
        list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    )
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


# GPT-2's pre-tokenisation: contractions, letter runs, digit runs, other-symbol runs, whitespace.
# The original uses \p{L} / \p{N} of the `regex` package; [^\W\d_] and \d are the stdlib equivalents.
_BPE_RE = re.compile(r"""'s|'t|'re|'ve|'m|'ll|'d| ?[^\W\d_]+| ?\d+| ?(?:[^\s\w]|_)+|\s+(?!\S)|\s+""")


class GPT2BPETokenizer(_Tokenizer):
    """GLIDE's tokenizer: GPT-2 byte-level BPE, lowercased input, padding id = ``<|endoftext|>``."""

    def __init__(self, encoder: dict[str, int], merges: list[tuple[str, str]], source: str = ""):
        self.encoder = encoder
        self.ranks = {pair: i for i, pair in enumerate(merges)}
        self.byte_encoder = _bytes_to_unicode()
        self.source = source
        self.pad_id = len(encoder) - 1  # GLIDE pads with the end token, n_vocab - 1 = 50256
        self._cache: dict[str, list[str]] = {}

    @classmethod
    def from_files(cls, path: str | os.PathLike | None = None) -> GPT2BPETokenizer:
        """Read ``encoder.json.gz`` and ``vocab.bpe.gz`` from the folder ``path`` (see :func:`find_bpe_files`)."""
        folder = find_bpe_files(path)
        with gzip.open(folder / BPE_FILES[0], "rt", encoding="utf-8") as f:
            encoder = json.load(f)
        with gzip.open(folder / BPE_FILES[1], "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        # First line is a version header ("#version: 0.2"); then one "a b" merge per line.
        merges = [tuple(line.split()) for line in lines[1:] if line.strip()]
        return cls(encoder, merges, source=str(folder))

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    def _bpe(self, word: str) -> list[str]:
        """Merge the characters of ``word`` pairwise, lowest merge rank first, until no merge applies."""
        if word in self._cache:
            return self._cache[word]
        parts = list(word)
        while len(parts) > 1:
            pairs = {(a, b) for a, b in zip(parts, parts[1:])}
            best = min(pairs, key=lambda p: self.ranks.get(p, float("inf")))
            if best not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == best:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        self._cache[word] = parts
        return parts

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in _BPE_RE.findall(text.lower()):
            chars = "".join(self.byte_encoder[b] for b in piece.encode("utf-8"))
            ids.extend(self.encoder[p] for p in self._bpe(chars))
        return ids

    def to_dict(self) -> dict:
        return {"kind": "gpt2-bpe", "vocab_size": self.vocab_size}


def find_bpe_files(path: str | os.PathLike | None = None) -> Path:
    """The folder holding GLIDE's ``encoder.json.gz`` and ``vocab.bpe.gz``.

    Looked for at ``path`` (if given, the only place), ``$PITI_GLIDE_TOKENIZER_DIR``, then the
    ``tokenizer/`` folder of an installed ``glide_text2im`` package. Raises MissingWeightsError
    saying where to put them.
    """
    looked: list[Path] = []
    if path is not None:
        looked.append(Path(path).expanduser())
    else:
        if os.environ.get(BPE_ENV_VAR):
            looked.append(Path(os.environ[BPE_ENV_VAR]).expanduser())
        spec = importlib.util.find_spec("glide_text2im")
        if spec is not None and spec.origin:
            looked.append(Path(spec.origin).parent / "tokenizer")
    for folder in looked:
        if all((folder / name).is_file() for name in BPE_FILES):
            return folder
    where = "\n".join(f"  - {p}" for p in looked) or "  (nowhere: no path given, $" + BPE_ENV_VAR + " unset)"
    raise MissingWeightsError(
        "GLIDE's GPT-2 BPE vocabulary is missing: need encoder.json.gz and vocab.bpe.gz "
        "(from openai/glide-text2im, folder glide_text2im/tokenizer/).\n"
        f"Put both files in one folder and pass it as the tokenizer path or set ${BPE_ENV_VAR}.\n"
        f"Looked at:\n{where}"
    )


def tokenizer_from_dict(d: dict, bpe_path: str | os.PathLike | None = None) -> _Tokenizer:
    """Rebuild a tokenizer from ``to_dict()`` (as stored beside runs and in model metadata)."""
    kind = d.get("kind") if isinstance(d, dict) else None
    if kind == "word":
        return WordTokenizer(d["words"])
    if kind == "gpt2-bpe":
        return GPT2BPETokenizer.from_files(bpe_path)
    raise ConfigError(f"unknown tokenizer description {d!r}; expected kind 'word' or 'gpt2-bpe'")


def load_tokenizer(path: str | os.PathLike, bpe_path: str | os.PathLike | None = None) -> _Tokenizer:
    """Read a tokenizer JSON written by ``save``."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"tokenizer file not found: {path}")
    try:
        d = json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path} is not a tokenizer JSON file: {e}") from None
    return tokenizer_from_dict(d, bpe_path)
