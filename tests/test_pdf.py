"""PDF documents: headers, footers and table-of-contents lines removed; chunks within the token budget."""

import pytest

from raftune.data.corpus import load_corpus
from raftune.data.pdf import chunk, clean_pages, pdf_pages, sentences

from conftest import SHARED

BODY = [
    "§ 1 Geltungsbereich (1) Diese Ordnung gilt für alle Studiengänge. (2) Sie tritt am 1. Oktober in Kraft.",
    "§ 2 Fristen (1) Die Anmeldung endet vier Wochen vor der Prüfung. (2) Ein Rücktritt ist bis drei Tage vorher "
    "möglich.",
    "§ 3 Noten (1) Die Noten reichen von 1,0 bis 5,0. (2) Bestanden ist eine Prüfung mit 4,0 oder besser.",
]


def write_pdf(path):
    """Three pages with a letterhead, a page footer and a table of contents, drawn with matplotlib's PDF backend."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(path) as pdf:
        for number, body in enumerate(BODY, start=1):
            figure = plt.figure(figsize=(8.27, 11.69))
            figure.text(0.1, 0.95, "Hochschule Seewalde")
            figure.text(0.1, 0.05, f"Seite {number} von 3")
            lines = ["Inhalt ........................ 2"] if number == 1 else []
            words, line = body.split(), ""
            for word in words:  # wrap at ~60 characters, as a PDF's lines would be
                if len(line) + len(word) > 60:
                    lines.append(line)
                    line = ""
                line = f"{line} {word}".strip()
            lines.append(line)
            for i, text in enumerate(lines):
                figure.text(0.1, 0.85 - 0.03 * i, text)
            pdf.savefig(figure)
            plt.close(figure)


def test_pdf_is_cleaned_and_chunked_with_pages_and_sections(tmp_path):
    write_pdf(tmp_path / "ordnung.pdf")
    pages = clean_pages(pdf_pages(tmp_path / "ordnung.pdf"))
    text = " ".join(" ".join(page) for page in pages)
    assert "Hochschule Seewalde" not in text and "Seite" not in text and "Inhalt" not in text
    assert "Die Anmeldung endet vier Wochen vor der Prüfung." in text

    units = list(sentences(pages))
    assert units[0][:2] == (1, "§ 1 Geltungsbereich")
    assert [u for u in units if "Rücktritt" in u[2]][0][:2] == (2, "§ 2 Fristen")

    words = lambda s: len(s.split())
    chunks = chunk(units, words, size=20, overlap=8)
    assert all(words(c[2]) <= 20 for c in chunks)
    # every sentence is in some chunk, and consecutive chunks share the overlap sentence
    assert all(any(u[2] in c[2] for c in chunks) for u in units)
    assert any(chunks[i][2].split(". ")[-1] in chunks[i + 1][2] for i in range(len(chunks) - 1))

    corpus = load_corpus(tmp_path, chunk_tokens=40, chunk_overlap=10)
    assert {c.page for c in corpus} == {1, 2, 3} and corpus[0].document == "ordnung"


@pytest.mark.skipif(not (SHARED / "seed-data" / "pdfs").is_dir(), reason="../shared/seed-data/pdfs is absent")
def test_seed_regulation_pdfs_chunk_within_the_embedder_budget():
    from raftune.data.embedders import embedding_tokenizer

    tokenizer = embedding_tokenizer()
    corpus = load_corpus(SHARED / "seed-data" / "pdfs", chunk_tokens=200, chunk_overlap=30)
    lengths = [len(tokenizer(c.text, add_special_tokens=False)["input_ids"]) for c in corpus]
    assert len(corpus) > 100 and max(lengths) <= 256
    assert not any("Seite" in c.text and "von 43" in c.text for c in corpus)
    assert any(c.section.startswith("§ 17 Informatik") for c in corpus)
