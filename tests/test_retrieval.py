"""Retrieval: BM25 with German stemming, the packaged multilingual embedders, reciprocal rank fusion, the comparison."""

import json

import pytest

from raftune import RaftuneError
from raftune.cli import main
from raftune.config import RunConfig
from raftune.data.corpus import Chunk, load_corpus
from raftune.data.retrieval import RRF_K, Retriever, build_retriever, retrieval_report
from raftune.data.testset import load_testset

from conftest import MINI, ROOT, SHARED, mini_config

TEXTS = ["Die Anmeldung zu den Prüfungen endet 21 Tage vor dem Prüfungstermin.",
         "Der Semesterbeitrag ist bis zum 15. Januar zu überweisen.",
         "Bei Krankheit ist innerhalb von drei Tagen ein ärztliches Attest vorzulegen.",
         "Die Bibliothek ist montags bis freitags geöffnet."]
CHUNKS = [Chunk(f"doc/{i}", "doc", i + 1, "", text) for i, text in enumerate(TEXTS)]
QUESTIONS = ["Bis wann muss ich mich zur Prüfung anmelden?", "Was brauche ich, wenn ich krank bin?",
             "Wann öffnet die Bibliothek?"]


def test_bm25_matches_german_inflections_and_scores_no_shared_word_zero():
    retriever = Retriever(CHUNKS, "bm25")
    scores = retriever.scores(["Prüfungsanmeldung Prüfung anmelden"])
    # "Prüfung" and "Prüfungen" share the Snowball stem; chunk 1 shares no word
    assert scores[0, 0] > 0 and scores[0, 1] == 0
    assert retriever.search(["ärztliches Attest"], 1)[0][0].id == "doc/2"


@pytest.mark.parametrize("model", ["multilingual-e5-small", "use-multilingual-v3", "all-MiniLM-L6-v2"])
def test_each_packaged_embedder_ranks_the_german_passage_first(model):
    hits = Retriever(CHUNKS, "dense", model).search_scored(QUESTIONS, 2)
    assert [row[0][0].id for row in hits] == ["doc/0", "doc/2", "doc/3"]
    assert all(len(row) == 2 and row[0][1] >= row[1][1] for row in hits)  # k deep, best first


def test_hybrid_is_the_reciprocal_rank_fusion_of_dense_and_bm25():
    dense = Retriever(CHUNKS, "dense", "multilingual-e5-small").scores(QUESTIONS)
    bm25 = Retriever(CHUNKS, "bm25").scores(QUESTIONS)
    hybrid = Retriever(CHUNKS, "hybrid", "multilingual-e5-small").scores(QUESTIONS)
    for q in range(len(QUESTIONS)):
        dense_order = sorted(range(len(CHUNKS)), key=lambda i: -dense[q, i])
        bm25_order = sorted(range(len(CHUNKS)), key=lambda i: -bm25[q, i])
        for i in range(len(CHUNKS)):
            expected = 1 / (RRF_K + 1 + dense_order.index(i))
            if bm25[q, i] > 0:  # a chunk without a shared word gets no BM25 vote
                expected += 1 / (RRF_K + 1 + bm25_order.index(i))
            assert hybrid[q, i] == pytest.approx(expected)


def test_unknown_retriever_or_embedder_is_named():
    with pytest.raises(RaftuneError, match="evaluate.retriever must be one of dense, bm25, hybrid, got 'tfidf'"):
        Retriever(CHUNKS, "tfidf")
    with pytest.raises(RaftuneError, match="evaluate.retrieval_model: cannot load '/no/such/model'"):
        Retriever(CHUNKS, "dense", "/no/such/model")


def test_the_default_retriever_finds_the_cited_passage_in_the_top_3_for_90_percent_of_the_demo_set(tmp_path):
    items = load_testset(ROOT / "datasets" / "demo" / "testset.json")
    chunks = load_corpus(ROOT / "datasets" / "demo" / "corpus")
    ranked = build_retriever(RunConfig(runs_dir=str(tmp_path)), chunks).search([i.question for i in items], 3)
    assert retrieval_report(items, ranked, [3])["k"]["3"]["cited_passage"] >= 0.9


def test_retrieval_report_prints_every_retriever_side_by_side(tmp_path, capsys):
    config = mini_config(tmp_path)
    assert main(["evaluate", "--retrieval-report", "--config", str(ROOT / "configs" / "demo-tiny.yaml"),
                 f"runs_dir={tmp_path}", "run=mini", f"data.corpus={MINI / 'corpus'}",
                 f"evaluate.testset={MINI / 'testset.json'}"]) == 0
    table = capsys.readouterr().out.splitlines()
    assert table[2] == "| retriever | hit@1 | hit@3 | hit@5 |"
    names = [line.split(" | ")[0].strip("| ") for line in table[4:]]
    assert names == ["**dense (multilingual-e5-small)** (configured)", "dense (use-multilingual-v3)",
                     "dense (all-MiniLM-L6-v2)", "bm25", "hybrid (multilingual-e5-small)",
                     "hybrid (use-multilingual-v3)", "hybrid (all-MiniLM-L6-v2)"]
    saved = json.loads((config.stage_dir("evaluate") / "retrievers.json").read_text())
    assert len(saved["retrievers"]) == 7 and saved["configured"] == ["dense", "multilingual-e5-small"]


SEED_PDFS = SHARED / "seed-data" / "pdfs"


def test_seed_pdf_testset_has_45_questions_with_keywords_and_cited_pages():
    items = load_testset(ROOT / "datasets" / "seed-pdfs" / "testset.json")
    assert len(items) == 45 and len({i.test_id for i in items}) == 15
    assert all(len(i.keywords) >= 1 and i.cite_pages for i in items)


@pytest.mark.skipif(not SEED_PDFS.is_dir(), reason=f"seed PDFs not found at {SEED_PDFS} (../shared is absent)")
def test_seed_pdf_testset_keywords_are_in_the_reference_and_the_cited_pages():
    items = load_testset(ROOT / "datasets" / "seed-pdfs" / "testset.json")
    chunks = load_corpus(SEED_PDFS)
    for item in items:
        cited = " ".join(c.text for c in chunks if c.document == item.cite_document and c.page in item.cite_pages)
        assert cited, (item.test_id, item.cite_document)
        for keyword in item.keywords:
            assert keyword in item.reference and keyword.lower() in cited.lower(), (item.test_id, keyword)
