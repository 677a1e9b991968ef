"""Word-level and GPT-2 BPE tokenizers of the pretraining stage."""

from __future__ import annotations

import gzip
import json
import os

import pytest
import torch

from piti.data.tokenizer import (
    BPE_ENV_VAR,
    GPT2BPETokenizer,
    WordTokenizer,
    load_tokenizer,
    tokenizer_from_dict,
)
from piti.errors import ConfigError, MissingWeightsError

CAPTIONS = ["two trees by the sea under a clear sky", "A boat on the open sea, at sunset"]


def test_word_tokenizer_vocabulary_and_encoding():
    tok = WordTokenizer.from_captions(CAPTIONS)
    # sorted unique lowercase words and punctuation, after <pad> (0) and <unk> (1)
    assert tok.itos[:4] == ["<pad>", "<unk>", ",", "a"]
    assert tok.vocab_size == 2 + 15  # 9 words in the first caption, 5 new ones and "," in the second
    assert tok.words == sorted(tok.words)
    ids = tok.encode("A boat, under the sky")
    assert tok.decode(ids) == "a boat , under the sky"
    assert tok.encode("a purple boat") == [tok.stoi["a"], tok.unk_id, tok.stoi["boat"]]
    # the vocabulary does not depend on the order of the captions
    assert WordTokenizer.from_captions(CAPTIONS[::-1]).itos == tok.itos


def test_padding_mask_and_batches_follow_glide():
    tok = WordTokenizer.from_captions(CAPTIONS)
    ids, mask = tok.padded_tokens_and_mask(tok.encode("two trees by the sea"), 8)
    assert ids[5:] == [tok.pad_id] * 3 and mask == [True] * 5 + [False] * 3
    ids, mask = tok.padded_tokens_and_mask(list(range(2, 12)), 8)  # truncated
    assert ids == list(range(2, 10)) and all(mask)
    tokens, mask = tok.batch(["a boat", ""], 6)
    assert tokens.shape == mask.shape == (2, 6) and tokens.dtype == torch.long and mask.dtype == torch.bool
    assert mask.sum(1).tolist() == [2, 0]  # the empty caption is the unconditional input: all padding


def test_tokenizer_round_trips_through_json(tmp_path):
    tok = WordTokenizer.from_captions(CAPTIONS)
    tok.save(tmp_path / "tokenizer.json")
    again = load_tokenizer(tmp_path / "tokenizer.json")
    assert again.itos == tok.itos and again.encode(CAPTIONS[1]) == tok.encode(CAPTIONS[1])
    assert tokenizer_from_dict(json.loads((tmp_path / "tokenizer.json").read_text())).itos == tok.itos
    with pytest.raises(ConfigError, match="unknown tokenizer"):
        tokenizer_from_dict({"kind": "sentencepiece"})
    with pytest.raises(ConfigError, match="not found"):
        load_tokenizer(tmp_path / "missing.json")
    with pytest.raises(ConfigError, match="unique"):
        WordTokenizer(["a", "a"])


def _write_bpe(folder, encoder: dict, merges: list[str]):
    folder.mkdir(parents=True, exist_ok=True)
    with gzip.open(folder / "encoder.json.gz", "wt", encoding="utf-8") as f:
        json.dump(encoder, f)
    with gzip.open(folder / "vocab.bpe.gz", "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(merges) + "\n")


def test_gpt2_bpe_on_a_hand_made_vocabulary(tmp_path):
    # GPT-2 maps the space byte to "Ġ" (U+0120) and the UTF-8 bytes of "é" (C3 A9) to "Ã", "©".
    pieces = [
        "h",
        "e",
        "l",
        "o",
        "w",
        "r",
        "d",
        "Ġ",
        "Ã",
        "©",
        "he",
        "ll",
        "hell",
        "hello",
        "Ġw",
        "or",
        "<|endoftext|>",
    ]
    encoder = {p: i for i, p in enumerate(pieces)}
    _write_bpe(tmp_path / "bpe", encoder, ["h e", "l l", "he ll", "hell o", "Ġ w", "o r"])
    tok = GPT2BPETokenizer.from_files(tmp_path / "bpe")
    assert tok.vocab_size == 17 and tok.pad_id == 16  # padding is <|endoftext|>, the last id
    # "hello": h e l l o -> he l l o -> he ll o -> hell o -> hello; " world": Ġw or l d (no merge for "or l")
    assert tok.encode("Hello world") == [13, 14, 15, 2, 6]
    assert tok.encode("é") == [8, 9]  # byte level: two bytes, two symbols
    tokens, mask = tok.batch(["hello"], 4)
    assert tokens.tolist() == [[13, 16, 16, 16]] and mask.tolist() == [[True, False, False, False]]
    assert tok.to_dict() == {"kind": "gpt2-bpe", "vocab_size": 17}


def test_gpt2_bpe_files_missing_is_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.delenv(BPE_ENV_VAR, raising=False)
    with pytest.raises(MissingWeightsError, match=r"encoder\.json\.gz and vocab\.bpe\.gz.*glide_text2im/tokenizer"):
        GPT2BPETokenizer.from_files(tmp_path)
    _write_bpe(tmp_path / "env", {"a": 0, "<|endoftext|>": 1}, [])
    monkeypatch.setenv(BPE_ENV_VAR, str(tmp_path / "env"))
    assert GPT2BPETokenizer.from_files().vocab_size == 2


@pytest.mark.skipif(not os.environ.get(BPE_ENV_VAR), reason=f"GLIDE's BPE files not available (set {BPE_ENV_VAR})")
def test_gpt2_bpe_matches_glide_on_its_documented_example():
    # glide-text2im encodes "an oil painting of a corgi" as these ids (research notes, glide.md 1.6).
    tok = GPT2BPETokenizer.from_files()
    assert tok.vocab_size == 50257 and tok.pad_id == 50256
    assert tok.encode("an oil painting of a corgi") == [272, 3056, 12036, 286, 257, 1162, 12397]
