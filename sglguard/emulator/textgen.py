"""Deterministic stand-in for a tokenizer and a language model: words in, words out."""

from __future__ import annotations

import hashlib
import re

# Words and single punctuation marks count as tokens, with their leading whitespace, so the
# pieces of a text always join back into exactly that text.
_TOKEN_RE = re.compile(r"\s*(?:\w+|\S)|\s+")
# Structured output (JSON) tokenizes coarser, about as densely as a real BPE vocabulary.
_CHUNK_RE = re.compile(r"\s*\S+|\s+")

_VOCABULARY = (
    "the server answers with a short and steady reply about models tokens memory "
    "requests queue latency is low today because each batch runs on one GPU while "
    "cache hits keep prefill fast so decoding continues smoothly for every user who "
    "asks questions in plain words here now again"
)
_WORDS = tuple(_VOCABULARY.split(" "))

BOS_TOKENS = 1  # Llama tokenizers prepend <|begin_of_text|>


def tokenize(text: str) -> list[str]:
    return _TOKEN_RE.findall(text)


def output_pieces(text: str) -> list[str]:
    """Constrained output split into generated tokens; they join back into `text`."""
    return _CHUNK_RE.findall(text)


def prompt_tokens(text: str) -> list[str]:
    """The prompt as the emulated tokenizer sees it, beginning-of-text token included."""
    return ["<bos>", *tokenize(text)]


def synth_words(seed: str, count: int) -> list[str]:
    """`count` words chosen from a hash of `seed`: the same prompt always gets the same text."""
    digest = hashlib.sha256(seed.encode()).digest()
    return [_WORDS[(digest[i % len(digest)] + 7 * i) % len(_WORDS)] for i in range(count)]


def word_pieces(words: list[str]) -> list[str]:
    """Words as generated tokens: the first bare, the others with a leading space."""
    return [word if i == 0 else f" {word}" for i, word in enumerate(words)]
