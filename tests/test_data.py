import json

import pytest

from raftune import RaftuneError
from raftune.data.corpus import load_corpus, load_qac
from raftune.answer import final_answer
from raftune.data.raft import build_rows, split_by_question

from conftest import MINI, mini_config


def test_mini_corpus_chunks_keep_document_page_and_section():
    chunks = load_corpus(MINI / "corpus")
    assert len(chunks) == 6
    first = [c for c in chunks if c.id == "ordnung/2"][0]
    assert (first.document, first.page, first.section) == ("ordnung", 2, "§ 3 Wiederholung")


def test_raft_rows_exact_counts_and_verbatim_quotes():
    chunks, qac = load_corpus(MINI / "corpus"), load_qac(MINI / "qac.json")
    rows = build_rows(chunks, qac, num_distractors=2, oracle_probability=1.0, rows_per_question=2, seed=0)
    assert len(rows) == 12
    for row in rows:
        assert len(row["documents"]) == 3  # the oracle and two distractors, as gorilla/raft lays them out
        assert row["documents"][row["oracle_index"]] == row["oracle_context"]
        quote = row["cot_answer"].split("##begin_quote##")[1].split("##end_quote##")[0]
        assert quote in row["oracle_context"]
        assert final_answer(row["cot_answer"]) == row["answer"]
        assert row["context"]["sentences"][0] == row["documents"]  # gorilla/raft layout kept


def test_oracle_probability_zero_leaves_oracle_out():
    chunks, qac = load_corpus(MINI / "corpus"), load_qac(MINI / "qac.json")
    rows = build_rows(chunks, qac, num_distractors=2, oracle_probability=0.0, rows_per_question=1, seed=0)
    assert all(r["oracle_index"] is None and r["oracle_context"] not in r["documents"] for r in rows)
    assert all(len(r["documents"]) == 3 for r in rows)  # a third distractor takes the oracle's place


def test_retrieved_distractors_are_the_retrievers_best_ranked_other_chunks(tmp_path):
    from raftune.data import stage as data_stage
    from raftune.data.retrieval import Retriever

    config = mini_config(tmp_path, "data.distractors=retrieved", "evaluate.retriever=bm25", "data.num_distractors=1",
                         "data.oracle_probability=1.0", "data.eval_fraction=0", "data.rows_per_question=1")
    rows = [json.loads(line) for line in (data_stage.run(config) / "hf_train.jsonl").open()]
    chunks = load_corpus(MINI / "corpus")
    ranked = Retriever(chunks, "bm25").search([r["question"] for r in rows], len(chunks))
    assert len(rows) == 6
    for row, best in zip(rows, ranked):
        pool = [c.text for c in best if c.text != row["oracle_context"]][:2]  # (1 distractor + 1) x 1 row
        distractors = [d for d in row["documents"] if d != row["oracle_context"]]
        assert len(distractors) == 1 and distractors[0] in pool
        order = [c.text for c in best]
        assert row["documents"] == sorted(row["documents"], key=order.index)  # the retriever's order


def test_split_is_by_question():
    chunks, qac = load_corpus(MINI / "corpus"), load_qac(MINI / "qac.json")
    rows = build_rows(chunks, qac, 2, 0.8, 3, seed=0)
    train, held_out = split_by_question(rows, 0.2, seed=0)
    assert len(train) + len(held_out) == 18 and len(held_out) == 3  # one question of six, three rows
    assert not {r["question"] for r in train} & {r["question"] for r in held_out}


def test_qac_context_not_in_corpus_names_row(tmp_path):
    bad = tmp_path / "qac.json"
    rows = json.loads((MINI / "qac.json").read_text())
    rows[3]["context"] = "Ein Absatz, den es nicht gibt."
    bad.write_text(json.dumps(rows))
    with pytest.raises(RaftuneError, match=r"qac.json: row 3: field 'context'"):
        build_rows(load_corpus(MINI / "corpus"), load_qac(bad), 2, 0.8, 1, seed=0, source=str(bad))


def test_qac_missing_field_names_row_and_field(tmp_path):
    bad = tmp_path / "qac.json"
    bad.write_text(json.dumps([{"question": "q", "answer": "a", "context": "c"}, {"question": "q", "context": "c"}]))
    with pytest.raises(RaftuneError, match=r"row 1: field 'answer'"):
        load_qac(bad)


def test_broken_corpus_file_names_paragraph_and_field(tmp_path):
    (tmp_path / "doc.json").write_text(json.dumps({"document": "doc", "paragraphs": [{"page": 1, "text": "x"},
                                                                                        {"text": "y"}]}))
    with pytest.raises(RaftuneError, match=r"doc.json: paragraph 1: missing field 'page'"):
        load_corpus(tmp_path)


def test_sentences_end_at_full_stops_not_after_dates_ordinals_or_list_numbers():
    from raftune.data.raft import split_sentences

    text = ("(1) Bewerbungen müssen bis zum 20. Juli eingegangen sein. Das gilt ab dem 1. Fachsemester; "
            "beizufügen sind: 1. Zeugnisse, 2. Lebenslauf. Die Frist endet im Jahr 2021. Danach nicht mehr!")
    assert split_sentences(text) == [
        "(1) Bewerbungen müssen bis zum 20. Juli eingegangen sein.",
        "Das gilt ab dem 1. Fachsemester; beizufügen sind: 1. Zeugnisse, 2. Lebenslauf.",
        "Die Frist endet im Jahr 2021.",
        "Danach nicht mehr!",
    ]
