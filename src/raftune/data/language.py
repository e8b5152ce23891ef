"""The language a text is written in, by py3langid (langid.py's model of 97 languages, inside the package, numpy
only): `raftune data inspect` and `data clean` report each language's share of questions and answers, and the local
generator asks for questions in its chunk's language."""

from __future__ import annotations

import re
from collections import Counter

from raftune.answer import without_quotes

NONE = "none"  # a text of fewer than MIN_WORDS words: empty, a number, a § reference, a date, a name
# py3langid names some language for any letters: "20. Januar" came out Swedish, "<ANSWER>4" English, "4,0" Arabic.
# Words in capitals (abbreviations such as MSI or IT, markup such as <ANSWER>) do not count.
MIN_WORDS = 3
_WORD = re.compile(r"[^\W\d_]{2,}")


def language(text: str | None) -> str:
    """The ISO 639-1 code of the most likely language, or NONE when the text has too few words to tell."""
    if not text or sum(not word.isupper() for word in _WORD.findall(text)) < MIN_WORDS:
        return NONE
    import py3langid

    return py3langid.classify(text)[0]


def languages(questions: list[str | None], answers: list[str | None]) -> dict[str, dict[str, int]]:
    """Rows per language of the question and of the answer (rows without one are not counted), most frequent first.
    An answer's quotes are left out: they are the documents' words, and an English reasoning that quotes German rules
    still teaches English."""
    count = lambda texts: dict(Counter(language(t) for t in texts if t is not None).most_common())
    return {"question": count(questions), "answer": count(a and without_quotes(a) for a in answers)}


def format_shares(counts: dict[str, int]) -> str:
    """'de 75.0% (3), en 25.0% (1)'."""
    total = sum(counts.values())
    return ", ".join(f"{code} {n / total:.1%} ({n})" for code, n in counts.items()) if total else "no rows"
