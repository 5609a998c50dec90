"""Cut a stream of LLM text pieces into chunks for TTS.

Two modes (S2S_LLM_CHUNKING):
- sentences: whole sentences from the start (the original app's chunker, exactly): a chunk is the
  text up to the last sentence end once it holds at least `min_words` (8) words. `original`, its
  name before, is still accepted (deprecated).
- fast (default): the first chunk is the first clause of at least `first_min_words` (3) words, cut at
  , ; : . ! or ?, so the first audio starts sooner; after it, the original rule. A cut waits for the
  space after the mark, so "2,500" and "3.14" are never split across two clips.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

# A sentence boundary: . ! or ? followed by whitespace or the end of the buffer (the original's rule).
BOUNDARY = re.compile(r"[.!?](?:\s|$)")
# Fast mode: a sentence end or a clause mark, with the space after it already generated.
SENTENCE_END = re.compile(r"[.!?](?=\s)")
CLAUSE_END = re.compile(r"[,;:.!?](?=\s)")

CHUNKING_MODES = ("fast", "sentences")
# Old names still accepted in S2S_LLM_CHUNKING, and what they mean now. Deprecated: the stage
# warns at start; env files should say the new name.
DEPRECATED_CHUNKING = {"original": "sentences"}


def _words(text: str) -> int:
    return len(text.split())


def iter_sentence_chunks(pieces: Iterable[str], min_words: int = 8) -> Iterator[str]:
    """The original: yield text up to the last boundary once that text holds at least `min_words` words.

    min_words keeps 2-word fragments like "Sure!" from becoming choppy separate clips.
    Whatever is left when the stream ends is flushed as the last chunk.
    """
    buf = ""
    for piece in pieces:
        buf += piece
        last = None
        for last in BOUNDARY.finditer(buf):
            pass
        if last is not None and _words(buf[: last.end()]) >= min_words:
            chunk = buf[: last.end()].strip()
            buf = buf[last.end():].strip()
            yield chunk
    if buf.strip():
        yield buf.strip()


def _first_clause_end(buf: str, first_min_words: int) -> int | None:
    """End of the first clause that completes at least first_min_words words, if one is complete."""
    for match in CLAUSE_END.finditer(buf):
        if _words(buf[: match.end()]) >= first_min_words:
            return match.end()
    return None


def _last_sentence_end(buf: str, min_words: int) -> int | None:
    last = None
    for last in SENTENCE_END.finditer(buf):
        pass
    if last is not None and _words(buf[: last.end()]) >= min_words:
        return last.end()
    return None


def iter_fast_chunks(pieces: Iterable[str], first_min_words: int = 3, min_words: int = 8) -> Iterator[str]:
    """A short first clause, then the original rule; the rest is flushed when the stream ends."""
    buf = ""
    first = True
    for piece in pieces:
        buf += piece
        # one piece may complete the first clause and a sentence after it
        while (cut := _first_clause_end(buf, first_min_words) if first
               else _last_sentence_end(buf, min_words)) is not None:
            chunk = buf[:cut].strip()
            buf = buf[cut:].lstrip()
            first = False
            yield chunk
    if buf.strip():
        yield buf.strip()


def iter_chunks(pieces: Iterable[str], mode: str = "fast", min_words: int = 8,
                first_min_words: int = 3) -> Iterator[str]:
    if mode == "sentences":
        return iter_sentence_chunks(pieces, min_words)
    if mode == "fast":
        return iter_fast_chunks(pieces, first_min_words, min_words)
    raise ValueError(f"unknown chunking mode {mode!r} (use {' or '.join(CHUNKING_MODES)})")
