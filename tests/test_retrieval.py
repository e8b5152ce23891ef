"""Retrieval: BM25 with German stemming, the packaged multilingual embedders, reciprocal rank fusion, the comparison."""

import json
from pathlib import Path

import pytest

from raftune import RaftuneError
from raftune.cli import main
from raftune.config import RunConfig
from raftune.data.corpus import Chunk, document_key, load_corpus
from raftune.data.retrieval import RRF_K, Retriever, build_retriever, cites, contexts, retrieval_report
from raftune.data.testset import load_testset
from raftune.manifest import STAGES, _covers, config_keys

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


def mini_testset_citing(tmp_path, name) -> Path:
    """The mini test set with every citation's document renamed by `name(document)`."""
    data = json.loads((MINI / "testset.json").read_text(encoding="utf-8"))
    for test in data["tests"]:
        test["answers"][0]["cite"]["document"] = name(test["answers"][0]["cite"]["document"])
    path = tmp_path / "testset.json"
    path.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    return path


@pytest.mark.parametrize("cited, key", [
    ("119_ZuSMa_Senat_18012022.pdf", "119_zusma_senat_18012022"), ("119_ZuSMa_Senat_18012022", "119_zusma_senat_18012022"),
    ("seed-data/pdfs/119_ZuSMa_Senat_18012022.PDF", "119_zusma_senat_18012022"), ("C:\\docs\\APO.md", "apo"),
    (" ordnung.json ", "ordnung"), ("Ordnung v1.2", "ordnung v1.2"), ("bericht.docx", "bericht.docx")])
def test_a_document_is_named_by_its_file_name_with_or_without_extension_and_case(cited, key):
    assert document_key(cited) == key


@pytest.mark.parametrize("name", [lambda d: f"{d}.pdf", lambda d: f"{d.upper()}.PDF", lambda d: f"corpus/{d}.json"],
                         ids=["pdf", "upper-case", "folder-and-json"])
def test_a_citation_with_the_file_extension_scores_as_the_stem_does(tmp_path, name):
    chunks = load_corpus(MINI / "corpus")
    by_stem, by_file = load_testset(MINI / "testset.json"), load_testset(mini_testset_citing(tmp_path, name))
    assert by_file[0].cite_document != by_stem[0].cite_document
    ranked = [chunks] * len(by_stem)  # every chunk, in corpus order
    assert retrieval_report(by_file, ranked, [1, 6]) == retrieval_report(by_stem, ranked, [1, 6])
    assert retrieval_report(by_file, ranked, [6])["k"]["6"]["cited_passage"] == 1.0
    assert [[c.id for c in chunks if cites(i, c)] for i in by_file] == [[c.id for c in chunks if cites(i, c)] for i in by_stem]
    # citation scoring: the passages the test cites, as evaluate gathers them
    config = mini_config(tmp_path / "runs", "evaluate.retriever=bm25")
    contexts(config, by_file)
    contexts(config, by_stem)
    assert [i.cited_texts for i in by_file] == [i.cited_texts for i in by_stem] and all(i.cited_texts for i in by_file)


def test_a_test_set_whose_citations_name_no_corpus_document_is_one_line(tmp_path, capsys):
    testset = mini_testset_citing(tmp_path, lambda d: {"ordnung": "pruefungsordnung.pdf"}.get(d, "gebuehren2.pdf"))
    assert main(["evaluate", "--retrieval-report", "--config", str(ROOT / "configs" / "demo-tiny.yaml"),
                 f"runs_dir={tmp_path}", f"data.corpus={MINI / 'corpus'}", f"evaluate.testset={testset}"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"raftune: error: {testset}: none of its 2 cited documents is in the corpus {MINI / 'corpus'}: "
        f"'pruefungsordnung.pdf' is not one of gebuehren, ordnung (a citation matches a corpus file name, with or "
        f"without its extension, case ignored)"]
    config = mini_config(tmp_path / "runs", "evaluate.retriever=bm25", f"evaluate.testset={testset}")
    with pytest.raises(RaftuneError, match=r"none of its 2 cited documents is in the corpus"):  # evaluate says it too
        contexts(config, load_testset(testset))


def test_evaluate_corpus_answers_from_other_documents_than_the_training_rows(tmp_path):
    demo = ROOT / "datasets" / "demo" / "corpus"
    items = load_testset(MINI / "testset.json")
    trained_elsewhere = mini_config(tmp_path / "runs", "evaluate.retriever=bm25", f"data.corpus={demo}")
    mini_texts = {chunk.text for chunk in load_corpus(MINI / "corpus")}
    context, _ = contexts(trained_elsewhere, items)
    assert not any(p["text"] in mini_texts for row in context for p in row)  # answered from the training corpus
    config = mini_config(tmp_path / "runs", "evaluate.retriever=bm25", f"data.corpus={demo}",
                         f"evaluate.corpus={MINI / 'corpus'}")
    context, report = contexts(config, items)
    assert len(context) == len(items) and all(p["text"] in mini_texts for row in context for p in row)
    assert report["k"]["3"]["cited_passage"] > 0
    # the documents answered from are an input of the stages that retrieve, not of those that train
    assert [name for name in STAGES if _covers(config_keys(config, name), "evaluate.corpus")] == ["export", "evaluate"]


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
        cited = " ".join(c.text for c in chunks if cites(item, c))
        assert cited, (item.test_id, item.cite_document)
        for keyword in item.keywords:
            assert keyword in item.reference and keyword.lower() in cited.lower(), (item.test_id, keyword)
