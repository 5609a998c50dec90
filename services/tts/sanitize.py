"""clean_for_tts: make LLM text safe and natural for the phonemizer (the original's sanitizer).

The phonemizer chokes on markdown and on unicode punctuation (em-dashes above all), so every
sentence passes through here before TTS.
"""

from __future__ import annotations

import re

_MARKDOWN = [
    (re.compile(r"```[\s\S]*?```"), ""),  # fenced code blocks: removed
    (re.compile(r"`[^`]*`"), ""),  # inline code: removed
    (re.compile(r"\*\*([^*]+)\*\*"), r"\1"),  # **bold** -> bold
    (re.compile(r"\*([^*]+)\*"), r"\1"),  # *italic* -> italic
    (re.compile(r"#{1,6}\s+"), ""),  # headers
    (re.compile(r"^\s*[-*]\s+", re.MULTILINE), ""),  # bullets
    (re.compile(r"^\s*\d+\.\s+", re.MULTILINE), ""),  # numbered lists
    (re.compile(r"\[([^\]]+)\]\([^)]+\)"), r"\1"),  # [link](url) -> link
]

UNICODE_TO_ASCII = {
    "\u2014": ", ",  # em-dash, the most common crash trigger
    "\u2013": " to ",  # en-dash
    "\u2026": "...",  # ellipsis
    "\u2018": "'",
    "\u2019": "'",
    "\u201c": '"',
    "\u201d": '"',
    "\u00b2": " squared",
    "\u00b0": " degrees",
}

# Spelled out so the phonemizer does not guess at them as words.
ABBREVIATIONS = {
    "PSI": "P.S.I.",
    "CO2": "C O 2",
    "DNA": "D.N.A.",
    "AI": "A.I.",
    "API": "A.P.I.",
    "LLM": "L.L.M.",
}
# A full stop right after a dotted expansion is absorbed, so "DNA." does not become "D.N.A..".
_ABBREVIATION = re.compile(r"\b(" + "|".join(map(re.escape, ABBREVIATIONS)) + r")\b(\.?)")


def _expand(match: re.Match) -> str:
    spoken = ABBREVIATIONS[match.group(1)]
    return spoken if spoken.endswith(".") else spoken + match.group(2)

_NON_ASCII = re.compile(r"[^\x00-\x7F]+")
_SPACES = re.compile(r"[ \t]+")


def clean_for_tts(text: str) -> str:
    for pattern, replacement in _MARKDOWN:
        text = pattern.sub(replacement, text)
    for char, replacement in UNICODE_TO_ASCII.items():
        text = text.replace(char, replacement)
    text = _ABBREVIATION.sub(_expand, text)
    text = _NON_ASCII.sub(" ", text)
    return _SPACES.sub(" ", text).strip()
