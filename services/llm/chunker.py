"""Cut a stream of LLM text pieces into sentences for TTS (the original app's chunker)."""

from __future__ import annotations

import re
from typing import Iterable, Iterator

# A sentence boundary: . ! or ? followed by whitespace or the end of the buffer.
BOUNDARY = re.compile(r"[.!?](?:\s|$)")


def iter_sentence_chunks(pieces: Iterable[str], min_words: int = 8) -> Iterator[str]:
    """Yield text up to the last boundary once that text holds at least `min_words` words.

    min_words keeps 2-word fragments like "Sure!" from becoming choppy separate clips.
    Whatever is left when the stream ends is flushed as the last chunk.
    """
    buf = ""
    for piece in pieces:
        buf += piece
        last = None
        for last in BOUNDARY.finditer(buf):
            pass
        if last is not None and len(buf[: last.end()].split()) >= min_words:
            chunk = buf[: last.end()].strip()
            buf = buf[last.end():].strip()
            yield chunk
    if buf.strip():
        yield buf.strip()
