"""The spoken rule, kept by the LLM stage whatever the model does: a reply ends after
S2S_LLM_MAX_SENTENCES sentences, and at the first sentence that repeats (or nearly repeats) an
earlier one, so a model caught in a loop is never read out again and again.

ReplyRules reads the reply's text pieces as they are generated. Sentence 0 passes through at once
(so the chunker can cut a short first clause for the first audio); every later sentence is held
until it is complete and checked, so a repeat is dropped whole before any of it reaches TTS. The
chunker cuts later chunks at sentence ends anyway, so holding them delays no audio.

A sentence ends at . ! or ? followed by whitespace (the chunker's rule, so "3.14" is one word),
or at a line break; "1." of a numbered list and abbreviations such as "Dr." do not end one.
"""

from __future__ import annotations

import re
from difflib import SequenceMatcher
from typing import Iterable, Iterator

from proto import END_REASONS as _DECLARED

# Why a reply ended: the llm.done field end_reason (declared in proto/states.py), the `done`
# event's, the logs' and the load tester's counts.
END_REASONS = _DECLARED[1:]  # not "" (a stage that predates the field)
END_OF_TEXT, SENTENCE_LIMIT, REPETITION, TOKEN_CAP, CANCEL = END_REASONS

# A near copy: this share of the words match in order (difflib's ratio). One word changed in a
# sentence of seven or more counts as a copy; in a shorter one it does not.
NEAR_COPY_RATIO = 0.85

_END = re.compile(r"[.!?]+(?=\s)|\n")
# "Dr." or "e.g." ends no sentence, nor does "2." when it opens one (a numbered list's item).
_ABBREVIATION = re.compile(r"(?:^|\s)(?:mr|mrs|ms|dr|st|jr|sr|vs|e\.g|i\.e|u\.s)\.$", re.IGNORECASE)
_LIST_NUMBER = re.compile(r"^\s*\d+\.$")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


_LIST_MARK = re.compile(r"^\s*(?:\d+[.)]|[-*\u2022])\s+")


def _words(sentence: str) -> list[str]:
    """Lowercase words, without a list item's number or bullet ("2. x" repeats "1. x")."""
    return _WORD.findall(_LIST_MARK.sub("", sentence).lower().replace("\u2019", "'"))


def is_near_copy(a: list[str], b: list[str]) -> bool:
    """Whether two sentences (as lowercase words) say the same thing in nearly the same words."""
    if not a or not b:
        return False
    return a == b or SequenceMatcher(None, a, b, autojunk=False).ratio() >= NEAR_COPY_RATIO


def split_sentences(text: str) -> list[str]:
    """The sentences of a finished text, by the rules' own boundaries."""
    out, start = [], 0
    for end in _sentence_ends(text):
        if text[start:end].strip():
            out.append(text[start:end].strip())
        start = end
    if text[start:].strip():
        out.append(text[start:].strip())
    return out


def repeated_sentences(text: str) -> int:
    """How many sentences of a finished text repeat (or nearly repeat) an earlier one."""
    seen: list[list[str]] = []
    repeats = 0
    for sentence in split_sentences(text):
        words = _words(sentence)
        if any(is_near_copy(words, earlier) for earlier in seen):
            repeats += 1
        seen.append(words)
    return repeats


def _sentence_ends(text: str, start: int = 0) -> Iterator[int]:
    for match in _END.finditer(text, start):
        fragment = text[start: match.end()]
        if match.group() != "\n" and (_ABBREVIATION.search(fragment) or _LIST_NUMBER.match(fragment)):
            continue
        yield match.end()
        start = match.end()


class ReplyRules:
    """Fed the reply's pieces in order; passes on the text to speak and says when the reply ends."""

    def __init__(self, max_sentences: int = 4):
        if max_sentences < 1:
            raise ValueError("max_sentences must be at least 1")
        self.max_sentences = max_sentences
        self.text = ""  # everything fed so far
        self.sentences: list[str] = []  # the accepted sentences
        self._seen: list[list[str]] = []
        self._start = 0  # where the sentence being written begins in self.text
        self._released = 0  # how much of self.text has been passed on
        self.end_reason: str | None = None  # SENTENCE_LIMIT or REPETITION once the rules end the reply

    def feed(self, piece: str) -> str:
        """The text that may be spoken now (possibly ""). After the rules end the reply, always ""."""
        if self.end_reason is not None:
            return ""
        self.text += piece
        while (end := next(_sentence_ends(self.text, self._start), None)) is not None:
            if not self._accept(self._start, end):
                return self._release(self._start)  # the repeat is never passed on
            if len(self.sentences) >= self.max_sentences:
                self.end_reason = SENTENCE_LIMIT
                return self._release(end)
            # the space after the mark goes on with the sentence: the chunker cuts only there
            self._start = end + len(self.text[end:]) - len(self.text[end:].lstrip())
        # sentence 0 goes on at once (its first clause is the first audio); later ones when checked
        return self._release(len(self.text) if not self.sentences else self._start)

    def finish(self) -> str:
        """The stream ended: the last, unterminated sentence, unless it repeats an earlier one."""
        if self.end_reason is not None:
            return ""
        if self.text[self._start:].strip() and not self._accept(self._start, len(self.text)):
            return self._release(self._start)
        return self._release(len(self.text))

    def filter(self, pieces: Iterable[str]) -> Iterator[str]:
        """The pieces, cut where the rules end the reply; it stops reading there."""
        for piece in pieces:
            text = self.feed(piece)
            if text:
                yield text
            if self.end_reason is not None:
                return
        text = self.finish()
        if text:
            yield text

    def ends_with(self, piece: str) -> bool:
        """Feed one piece; True when the rules end the reply with it (the backends' `until`)."""
        self.feed(piece)
        return self.end_reason is not None

    def _accept(self, start: int, end: int) -> bool:
        sentence = self.text[start:end].strip()
        if not sentence:
            return True
        words = _words(sentence)
        if any(is_near_copy(words, earlier) for earlier in self._seen):
            self.end_reason = REPETITION
            return False
        if words:  # a line of punctuation alone is no sentence
            self._seen.append(words)
            self.sentences.append(sentence)
        return True

    def _release(self, upto: int) -> str:
        out = self.text[self._released:upto] if upto > self._released else ""
        self._released = max(self._released, upto)
        return out
