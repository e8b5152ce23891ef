"""Documents -> chunks (one chunk per paragraph, with document, page and section kept for citations)."""

from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from raftune import RaftuneError
from raftune.data.embedders import embedding_tokenizer
from raftune.data.formats import read_for
from raftune.data.pdf import chunk, clean_pages, pdf_pages, sentences


@dataclass
class Chunk:
    id: str  # "<document>/<n>"
    document: str
    page: int
    section: str
    text: str

    def to_dict(self) -> dict:
        return asdict(self)


CORPUS_SUFFIXES = (".json", ".txt", ".md", ".pdf")  # the files a corpus folder is read from


def document_key(name: str) -> str:
    """The one rule by which documents are compared (a test's citation with a corpus chunk's document): the file
    name, with or without its folder and a corpus file's extension, case ignored. Chunks are named by the file's
    stem ("119_ZuSMa_Senat_18012022"), and test sets cite "119_ZuSMa_Senat_18012022.pdf" as often."""
    name = re.split(r"[/\\]", name.strip())[-1]
    stem, dot, suffix = name.rpartition(".")
    # only a corpus extension goes: "Ordnung v1.2" keeps its ".2"
    return (stem if dot and f".{suffix.lower()}" in CORPUS_SUFFIXES else name).casefold()


def _require(obj: dict, key: str, kind, where: str):
    if key not in obj:
        raise RaftuneError(f"{where}: missing field '{key}'")
    if not isinstance(obj[key], kind):
        raise RaftuneError(f"{where}: field '{key}' must be {kind.__name__}, got {type(obj[key]).__name__}")
    return obj[key]


def load_corpus_json(path: Path) -> list[Chunk]:
    """The embedded corpus format {"document", "title", "paragraphs": [{"page", "section", "heading", "text"}]}, or
    the seed's paragraph lists [{"paragraph"}] (no pages: page 1)."""
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RaftuneError(f"{path}: not valid JSON ({err})") from None
    except UnicodeDecodeError as err:
        raise RaftuneError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
    if isinstance(doc, list):
        return [Chunk(f"{path.stem}/{i}", path.stem, 1, "", _require(para, "paragraph", str, f"{path}: row {i}").strip())
                for i, para in enumerate(doc) if str(para.get("paragraph", "x")).strip()]
    if not isinstance(doc, dict):
        raise RaftuneError(f"{path}: expected an object with 'document' and 'paragraphs', or a list of {{'paragraph'}}")
    name = _require(doc, "document", str, str(path))
    chunks = []
    for i, para in enumerate(_require(doc, "paragraphs", list, str(path))):
        where = f"{path}: paragraph {i}"
        text = _require(para, "text", str, where).strip()
        if not text:
            raise RaftuneError(f"{where}: field 'text' is empty")
        section = f"{para.get('section', '')} {para.get('heading', '')}".strip()
        chunks.append(Chunk(f"{name}/{i}", name, int(_require(para, "page", int, where)), section, text))
    return chunks


def load_text(path: Path) -> list[Chunk]:
    """Plain text or markdown: paragraphs are separated by blank lines; no page information (page 1)."""
    text = path.read_text(encoding="utf-8")
    paragraphs = [p.strip() for p in re.split(r"\n\s*\n", text) if p.strip()]
    return [Chunk(f"{path.stem}/{i}", path.stem, 1, "", p) for i, p in enumerate(paragraphs)]


def load_pdf(path: Path, size: int, overlap: int) -> list[Chunk]:
    """Cleaned text (no headers, footers or table of contents) in chunks of `size` embedder tokens."""

    tokenizer = embedding_tokenizer()
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])
    pieces = chunk(sentences(clean_pages(pdf_pages(path))), count, size, overlap)
    return [Chunk(f"{path.stem}/{i}", path.stem, page, section, text) for i, (page, section, text) in enumerate(pieces)]


def load_corpus(folder: str | Path, chunk_tokens: int = 200, chunk_overlap: int = 30) -> list[Chunk]:
    folder = Path(folder)
    if not folder.is_dir():
        raise RaftuneError(f"corpus folder not found: {folder}")
    chunks: list[Chunk] = []
    for path in sorted(folder.iterdir()):
        if path.suffix == ".json":
            chunks += load_corpus_json(path)
        elif path.suffix in {".txt", ".md"}:
            chunks += load_text(path)
        elif path.suffix == ".pdf":
            chunks += load_pdf(path, chunk_tokens, chunk_overlap)
    if not chunks:
        raise RaftuneError(f"{folder}: no documents found (expected *.json, *.txt, *.md or *.pdf)")
    return chunks


def load_qac(path: str | Path) -> list[dict]:
    """Question/answer/context triplets {"question", "answer", "context", ...} in any data format (data.formats)."""
    _, rows, _ = read_for(path, "data.qac")
    for i, row in enumerate(rows):
        for key in ("question", "answer", "context"):
            if not isinstance(row.get(key), str) or not row[key].strip():
                raise RaftuneError(f"{path}: row {i}: field '{key}' must be a non-empty string")
    return rows


def corpus_chunks(data_config) -> list[Chunk]:
    """The chunks of a run's corpus, as the config's `data` section describes them."""
    return load_corpus(data_config.corpus, data_config.chunk_tokens, data_config.chunk_overlap)
