"""The embedded demo corpus, its QAC triplets and its test set have the shapes the issue promises and agree."""

import json
from collections import Counter

from raftune.data.corpus import load_corpus, load_qac
from raftune.data.raft import build_rows
from raftune.data.testset import load_testset

from conftest import ROOT

DEMO = ROOT / "datasets" / "demo"


def test_corpus_has_numbered_sections_and_pages():
    chunks = load_corpus(DEMO / "corpus")
    documents = Counter(chunk.document for chunk in chunks)
    assert 3 <= len(documents) <= 4
    assert len(chunks) >= 40
    assert all(chunk.section.startswith("§ ") and chunk.page >= 1 for chunk in chunks)


def test_every_qac_context_is_a_corpus_paragraph():
    chunks = load_corpus(DEMO / "corpus")
    qac = load_qac(DEMO / "qac.json")
    texts = {chunk.text for chunk in chunks}
    assert all(row["context"] in texts for row in qac)
    # every paragraph is taught, twice
    assert Counter(row["context"] for row in qac) == Counter({text: 2 for text in texts})
    rows = build_rows(chunks, qac, num_distractors=2, oracle_probability=0.8, rows_per_question=1, seed=0)
    assert len(rows) == len(qac)


def test_testset_seed_shape_with_grounded_keywords():
    raw = json.loads((DEMO / "testset.json").read_text(encoding="utf-8"))
    assert len(raw["tests"]) >= 15
    pages = {(c.document, c.page): "" for c in load_corpus(DEMO / "corpus")}
    for chunk in load_corpus(DEMO / "corpus"):
        pages[(chunk.document, chunk.page)] += " " + chunk.text
    qac_questions = {row["question"] for row in load_qac(DEMO / "qac.json")}
    for test in raw["tests"]:
        assert len(test["questions"]) == 3
        answer = test["answers"][0]
        assert 2 <= len(answer["keywords"]) <= 6
        cited = " ".join(pages[(answer["cite"]["document"], page)] for page in answer["cite"]["page"])
        for keyword in answer["keywords"]:
            assert keyword in answer["text"] and keyword in cited, (test["id"], keyword)
        assert not {q["text"] for q in test["questions"]} & qac_questions
    assert len(load_testset(DEMO / "testset.json")) == 3 * len(raw["tests"])
