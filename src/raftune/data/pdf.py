"""PDF -> clean page texts -> chunks of a token budget with overlap, keeping page and section for citations.

Cleaning: lines that repeat on at least half of the pages once digits are masked ("Seite 6 von 43", the
university's letterhead) are headers or footers; lines with dot leaders are table-of-contents entries; words broken
at a line end with a hyphen are joined. Chunks are whole sentences, counted in tokens of the retrieval embedder's
tokenizer (all-MiniLM-L6-v2 reads at most 256 word pieces, so a chunk it cannot see whole is never made).
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from raftune import RaftuneError

DOT_LEADER = re.compile(r"(\.\s?){5,}|…{2,}")
# "... § 3 Form (1) Der Antrag ..." -> "§ 3 Form": a heading is a § number and a capitalised title followed by its
# first numbered paragraph; "nach § 5 Abs. 1" is a reference, not a heading
SECTION = re.compile(r"(§\s*\d+[a-z]?)\s+([A-ZÄÖÜ][^.§]{1,80}?)\s*\(1\)")
SENTENCE_END = re.compile(r"(?<=[.;:!?])\s+(?=[(A-ZÄÖÜ§0-9])")


def _mask(line: str) -> str:
    return re.sub(r"\d+", "#", line.strip())


def pdf_pages(path: Path) -> list[str]:
    from pypdf import PdfReader
    from pypdf.errors import PdfReadError

    try:
        pages = [page.extract_text() or "" for page in PdfReader(str(path)).pages]
    except (PdfReadError, ValueError, OSError) as err:
        raise RaftuneError(f"{path}: not a readable PDF ({err})") from None
    return pages


def clean_pages(pages: list[str]) -> list[list[str]]:
    """Each page's content lines, without repeated headers/footers, table-of-contents lines and blank lines."""
    lines = [[line.strip() for line in page.splitlines()] for page in pages]
    seen = Counter(mask for page in lines for mask in {_mask(line) for line in page if line})
    repeated = {mask for mask, n in seen.items() if len(pages) >= 3 and n >= len(pages) / 2}
    return [[line for line in page if line and _mask(line) not in repeated and not DOT_LEADER.search(line)]
            for page in lines]


def sentences(pages: list[list[str]]):
    """(page number, section, sentence) in reading order; a line ending in "-" joins the next line's word."""
    section = ""
    for number, page in enumerate(pages, start=1):
        text = ""
        for line in page:
            text = text[:-1] + line if text.endswith("-") and not text.endswith(" -") else f"{text} {line}"
        for sentence in SENTENCE_END.split(text.strip()):
            for heading in SECTION.finditer(sentence):
                section = f"{heading.group(1)} {heading.group(2)}"
            if sentence.strip():
                yield number, section, sentence.strip()


def _fit(sentence: str, count_tokens, size: int) -> list[str]:
    """A sentence longer than `size` tokens (tables, lists without full stops) cut between words."""
    pieces, current = [], []
    for word in sentence.split():
        if current and count_tokens(" ".join(current + [word])) > size:
            pieces.append(" ".join(current))
            current = []
        current.append(word)
    return pieces + [" ".join(current)]


def chunk(units, count_tokens, size: int, overlap: int) -> list[tuple[int, str, str]]:
    """Greedy chunks of whole sentences up to `size` tokens; each starts with the previous chunk's last sentences
    that fit in `overlap` tokens. A sentence longer than `size` is cut between words first."""
    units = [(page, section, piece) for page, section, sentence in units
             for piece in ([sentence] if count_tokens(sentence) <= size else _fit(sentence, count_tokens, size))]
    chunks, current = [], []  # current: [(page, section, sentence, tokens)]
    for page, section, sentence in units:
        tokens = count_tokens(sentence)
        if current and sum(u[3] for u in current) + tokens > size:
            chunks.append(current)
            carried = []
            for unit in reversed(current):
                if sum(u[3] for u in carried) + unit[3] > overlap:
                    break
                carried.insert(0, unit)
            current = carried
        current.append((page, section, sentence, tokens))
    if current and (not chunks or current != chunks[-1][-len(current):]):
        chunks.append(current)
    return [(c[0][0], c[0][1], " ".join(u[2] for u in c)) for c in chunks]
