"""The RAFT answer format, in one place: reasoning that quotes the context verbatim between ##begin_quote## and
##end_quote##, ending with a line `<ANSWER>: ` and the short answer. Data building writes it, cleaning checks it,
evaluation scores it and the assistant splits it, all with these functions.
"""

from __future__ import annotations

import re

BEGIN_QUOTE, END_QUOTE, ANSWER_MARKER = "##begin_quote##", "##end_quote##", "<ANSWER>:"
_CLOSED = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)" + re.escape(END_QUOTE), re.S)
_OPEN_OR_CLOSED = re.compile(re.escape(BEGIN_QUOTE) + r"(.*?)(?:" + re.escape(END_QUOTE) + r"|$)", re.S)


def quoted(text: str) -> str:
    return f"{BEGIN_QUOTE}{text}{END_QUOTE}"


def format_answer(quote: str, answer: str) -> str:
    """The short reasoning answer raftune writes itself: one verbatim quote, then the final answer."""
    return f"Im Kontext heißt es: {quoted(quote)}\n{ANSWER_MARKER} {answer}"


def reasoned_answer(quote: str, reasoning: str, answer: str) -> str:
    """A generator's reasoning answer: the verbatim quote, its own sentence of reasoning, then the final answer."""
    return f"{quoted(quote)}\n{reasoning}\n{ANSWER_MARKER} {answer}"


def quotes(text: str, closed_only: bool = False) -> list[str]:
    """The quoted spans. A generated answer cut off by the token limit may leave its last quote open; it counts
    unless `closed_only` (training data must close every quote)."""
    return (_CLOSED if closed_only else _OPEN_OR_CLOSED).findall(text)


def without_quotes(text: str) -> str:
    """The answer's own words: the quoted spans and the `<ANSWER>:` marker left out."""
    return _OPEN_OR_CLOSED.sub(" ", text).replace(ANSWER_MARKER, " ")


def without_markers(text: str) -> str:
    """The answer's words, its quotes' included: the quote and `<ANSWER>:` markers left out."""
    for marker in (BEGIN_QUOTE, END_QUOTE, ANSWER_MARKER):
        text = text.replace(marker, " ")
    return text


def has_final_answer(text: str) -> bool:
    return ANSWER_MARKER in text


def final_answer(text: str) -> str:
    """The text after `<ANSWER>:`; the whole text when there is no marker (so a model without it is still scored)."""
    return text.split(ANSWER_MARKER, 1)[1].strip() if ANSWER_MARKER in text else text.strip()
