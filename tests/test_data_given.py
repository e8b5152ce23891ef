"""Existing datasets as training input: data.raft (any container and shape, cleaned), data.paragraphs, data.qac."""

import json

import pytest

from raftune import RaftuneError
from raftune.cli import main
from raftune.data import stage as data_stage
from raftune.train import load_examples

from conftest import FORMATS, MINI, ROOT, SHARED, mini_config, write_data
from test_data_formats import numpy_repr_context

SEED = SHARED / "seed-data"
needs_seed = pytest.mark.skipif(not SEED.is_dir(), reason=f"seed data not found at {SEED} (../shared is absent)")

DOCS = ["Die Anmeldung zur Prüfung endet 21 Tage vor dem Termin im Prüfungsportal.",
        "Der Rücktritt von einer Prüfung ist bis sieben Tage vor dem Termin ohne Angabe von Gründen möglich.",
        "Bei Krankheit ist innerhalb von drei Tagen ein ärztliches Attest beim Prüfungsamt vorzulegen."]


def row(question, oracle, quote, answer="x", marker=True):
    cot = f"##begin_quote##{quote}##end_quote## " + (f"<ANSWER>: {answer}" if marker else answer)
    return {"id": "r", "type": "general", "question": question, "context": {"sentences": [DOCS], "title": [["t"] * 3]},
            "oracle_context": DOCS[oracle], "cot_answer": cot, "instruction": "..."}


ROWS = [
    row("Bis wann kann man sich anmelden?", 0, "Die Anmeldung zur Prüfung endet 21 Tage vor dem Termin", "21 Tage"),
    row("Bis wann kann man zurücktreten?", 1, ' "Der Rücktritt  von einer Prüfung" ', "sieben Tage"),  # repairable
    row("Your request seems unclear. Could you provide a context?", 0, "Die Anmeldung"),  # not a question
    row("Was ist bei Krankheit vorzulegen?", 2, "ein ärztliches Attest", "ein Attest"),
    # the first question again (case and spaces differ) with another oracle: one question, two rows
    row("bis wann kann man sich  Anmelden?", 2, "innerhalb von drei Tagen", "drei Tage"),
    row("Wie lange gilt das Attest?", 2, "ein ärztliches Attest", marker=False),  # no <ANSWER>:
    row("Bis wann kann man sich anmelden?", 0, "Die Anmeldung zur Prüfung endet 21 Tage vor dem Termin", "21 Tage"),  # dup
]


def write_rows(path, rows, container):
    if container == "repr":  # the seed's hand-cleaned variant: context as a numpy repr string
        return write_data(path, [{**r, "context": numpy_repr_context(DOCS)} for r in rows], "json")
    return write_data(path, rows, container)


def config_for(tmp_path, *overrides):
    return mini_config(tmp_path / "runs", "data.eval_fraction=0.34", *overrides)


@pytest.mark.parametrize("container", [*FORMATS, "repr"])
def test_raft_file_is_cleaned_split_by_question_and_read_by_train(tmp_path, container):
    path = write_rows(tmp_path / "rows", ROWS, container)
    config = config_for(tmp_path, f"data.raft={path}")
    out = data_stage.run(config)
    report = json.loads((out / "clean" / "report.json").read_text())
    # repair (the default) keeps the re-quoted row: 4 rows of 3 questions
    assert report["kept"] == 4 and report["rows_read"] == 7
    assert {k: v for k, v in report["rejected"].items() if v} == {"not_a_question": 1, "no_answer_marker": 1,
                                                                  "duplicate": 1}
    assert (out / "clean" / "report.md").is_file()
    splits = load_examples(config)
    train, held = list(splits["train"]), list(splits["eval"])
    assert len(train) + len(held) == 4
    # round(3 questions x 0.34) = 1 question held out, with all its rows
    assert len({r["question_index"] for r in held}) == 1
    assert not {r["question_index"] for r in held} & {r["question_index"] for r in train}
    assert {r["question_index"] for r in train + held if r["question"].lower().startswith("bis wann kann man sich")} \
        == {0}
    assert all(r["documents"] == DOCS for r in train + held)
    # the repaired quote is the context's exact span (the file had its own quote marks and a double space)
    assert "##begin_quote##Der Rücktritt von einer Prüfung##end_quote##" in \
        next(r["cot_answer"] for r in train + held if r["question"] == "Bis wann kann man zurücktreten?")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["raft_rows"]["train"] + manifest["outputs"]["raft_rows"]["eval"] == 4


@pytest.mark.parametrize("mode, kept, questions", [("repair", 4, 3), ("strict", 3, 2), ("off", 7, 5)])
def test_clean_modes(tmp_path, mode, kept, questions):
    path = write_rows(tmp_path / "rows", ROWS, "jsonl")
    config = config_for(tmp_path, f"data.raft={path}", f"data.clean={mode}")
    out = data_stage.run(config)
    splits = load_examples(config)
    rows = list(splits["train"]) + list(splits["eval"])
    assert len(rows) == kept and len({r["question_index"] for r in rows}) == questions
    assert (out / "clean" / "report.md").is_file() == (mode != "off")


def test_raft_file_also_trains_qac_and_docs(tmp_path):
    path = write_rows(tmp_path / "rows", ROWS, "jsonl")
    for approach, rows in (("qac", 3), ("docs", 3)):  # one triplet per question; the distinct documents
        config = config_for(tmp_path, f"data.raft={path}", f"train.approach={approach}")
        data_stage.run(config)
        splits = load_examples(config)
        assert len(splits["train"]) + len(splits["eval"]) == rows and len(splits["eval"]) == 1
    qac = [json.loads(line) for line in (config.stage_dir("data") / "qac_train.jsonl").read_text().splitlines()]
    qac += [json.loads(line) for line in (config.stage_dir("data") / "qac_eval.jsonl").read_text().splitlines()]
    assert {(r["question"], r["answer"], r["context"]) for r in qac} == {
        ("Bis wann kann man sich anmelden?", "21 Tage", DOCS[0]), ("Bis wann kann man zurücktreten?", "sieben Tage", DOCS[1]),
        ("Was ist bei Krankheit vorzulegen?", "ein Attest", DOCS[2])}


def test_paragraphs_and_qac_files_train_their_approach(tmp_path):
    paragraphs = tmp_path / "paragraphs.json"
    paragraphs.write_text(json.dumps([{"paragraph": f"Absatz {i} der Ordnung."} for i in range(10)] + [{"paragraph": " "}]))
    config = config_for(tmp_path, f"data.paragraphs={paragraphs}", "train.approach=docs", "data.eval_fraction=0.2")
    data_stage.run(config)
    splits = load_examples(config)
    assert (len(splits["train"]), len(splits["eval"])) == (8, 2)  # the blank paragraph is left out

    qac = tmp_path / "qac.json"
    triplets = [{"question": f"Frage {i}?", "answer": f"Antwort {i}", "context": f"Kontext {i}"} for i in range(9)]
    triplets.append({"question": "frage 0?", "answer": "Antwort 0b", "context": "Kontext 0b"})  # question 0 again
    qac.write_text(json.dumps(triplets))
    config = config_for(tmp_path, f"data.qac={qac}", "train.approach=qac", "data.eval_fraction=0.2")
    data_stage.run(config)
    splits = load_examples(config)
    held = {r["question"].lower() for r in splits["eval"]}
    assert len(held) == 2 and len(splits["train"]) + len(splits["eval"]) == 10  # round(9 questions x 0.2) held out
    assert not held & {r["question"].lower() for r in splits["train"]}


MINI_QAC = json.loads((MINI / "qac.json").read_text(encoding="utf-8"))


@pytest.mark.parametrize("container", FORMATS)
def test_data_qac_beside_the_corpus_takes_every_format(tmp_path, container):
    """The triplets RAFT rows are built from (the default approach): the same rows from every format."""
    out = data_stage.run(config_for(tmp_path, f"data.qac={write_data(tmp_path / 'qac', MINI_QAC, container)}"))
    outputs = json.loads((out / "manifest.json").read_text())["outputs"]
    # 6 triplets x data.rows_per_question=2; round(6 x 0.34) = 2 questions held out
    assert (outputs["questions"], outputs["train_rows"], outputs["eval_rows"]) == (6, 8, 4)
    rows = [json.loads(line) for name in ("hf_train.jsonl", "hf_eval.jsonl") for line in (out / name).read_text().splitlines()]
    assert {(r["question"], r["oracle_context"]) for r in rows} == {(q["question"], q["context"]) for q in MINI_QAC}


@pytest.mark.parametrize("container", FORMATS)
def test_paragraphs_and_qac_for_their_approach_take_every_format(tmp_path, container):
    paragraphs = [{"paragraph": f"Absatz {i} der Ordnung."} for i in range(10)]
    config = config_for(tmp_path, f"data.paragraphs={write_data(tmp_path / 'paragraphs', paragraphs, container)}",
                        "train.approach=docs", "data.eval_fraction=0.2")
    data_stage.run(config)
    splits = load_examples(config)
    assert len(splits["eval"]) == 2
    assert sorted(r["text"] for r in [*splits["train"], *splits["eval"]]) == sorted(p["paragraph"] for p in paragraphs)
    triplets = [{"question": f"Frage {i}?", "answer": f"Antwort {i}", "context": f"Kontext {i}"} for i in range(10)]
    config = config_for(tmp_path, f"data.qac={write_data(tmp_path / 'qac', triplets, container)}", "train.approach=qac",
                        "data.eval_fraction=0.2")
    data_stage.run(config)
    splits = load_examples(config)
    assert len(splits["eval"]) == 2
    assert sorted((r["question"], r["answer"], r["context"]) for r in [*splits["train"], *splits["eval"]]) == \
        sorted((t["question"], t["answer"], t["context"]) for t in triplets)


@pytest.mark.parametrize("container", FORMATS)
def test_a_raft_test_set_takes_every_format(tmp_path, container):
    from raftune.data.testset import load_testset

    rows = [ROWS[0], ROWS[1], ROWS[3], ROWS[4]]
    items = load_testset(write_data(tmp_path / "testset", rows, container))
    assert [(i.test_id, i.question_id, i.question, i.reference) for i in items] == [
        (1, 1, "Bis wann kann man sich anmelden?", "21 Tage"), (2, 1, "Bis wann kann man zurücktreten?", "sieben Tage"),
        (3, 1, "Was ist bei Krankheit vorzulegen?", "ein Attest"), (4, 1, "bis wann kann man sich  Anmelden?", "drei Tage")]
    assert all(i.documents == DOCS for i in items)
    assert [i.cited_texts for i in items] == [[DOCS[0]], [DOCS[1]], [DOCS[2]], [DOCS[2]]]


def test_a_file_that_does_not_fit_is_named_in_one_line(tmp_path, capsys):
    qac = tmp_path / "qac.json"
    qac.write_text(json.dumps([{"question": "Frage?", "answer": "A", "context": "K"}]))
    with pytest.raises(RaftuneError, match=r"data.raft: .*qac.json holds qac rows \(columns: question, answer, "
                                           r"context\); data.raft takes RAFT rows .* this file goes in data.qac"):
        data_stage.run(config_for(tmp_path, f"data.raft={qac}"))
    paragraphs = tmp_path / "paragraphs.json"
    paragraphs.write_text(json.dumps([{"paragraph": "Absatz."}]))
    config_path = tmp_path / "given.yaml"
    config_path.write_text(f"extends: {ROOT / 'configs' / 'demo-tiny.yaml'}\nruns_dir: {tmp_path / 'runs'}\n"
                           f"data:\n  paragraphs: {paragraphs}\n")
    assert main(["data", "build", "--config", str(config_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [f"raftune: error: train.approach=raft does not fit the given data (data.paragraphs={paragraphs}: "
                   f"it trains docs); raft needs data.raft (or data.corpus with data.qac, with no data.raft or "
                   f"data.paragraphs)"]
    assert not (tmp_path / "runs" / "demo" / "data" / "raft").exists()
    with pytest.raises(RaftuneError, match=r"data.clean='maybe': expected one of repair, strict, off"):
        data_stage.run(config_for(tmp_path, f"data.raft={write_rows(tmp_path / 'rows', ROWS, 'json')}",
                                  "data.clean=maybe"))


def test_raftune_train_trains_on_a_given_raft_file(tmp_path, tiny_cache):
    from raftune import train

    path = write_rows(tmp_path / "rows", ROWS, "arrow")
    config = config_for(tmp_path, f"data.raft={path}", "sft.max_steps=2", "train.sample_prompts=0")
    data_stage.run(config)
    adapter = train.run(config)
    assert json.loads((adapter / "metrics.json").read_text())["steps"] == 2


# --- the seed team's own files -------------------------------------------------------------------------------------

@needs_seed
def test_seed_raft_arrow_trains_after_cleaning(tmp_path):
    config = mini_config(tmp_path, f"data.raft={SEED / 'raft' / 'data.arrow'}", "data.eval_fraction=0.1")
    out = data_stage.run(config)
    assert json.loads((out / "clean" / "report.json").read_text())["kept"] == 184
    splits = load_examples(config)
    # 184 rows of 180 distinct questions; round(180 x 0.1) = 18 questions held out, one row each
    assert (len(splits["train"]), len(splits["eval"])) == (166, 18)
    assert len({r["question_index"] for r in splits["train"]} | {r["question_index"] for r in splits["eval"]}) == 180
    assert all("<ANSWER>:" in r["cot_answer"] for r in splits["train"])


@needs_seed
@pytest.mark.parametrize("key, approach, name, rows", [
    ("paragraphs", "docs", "chatbot-documents/train.json", 140), ("paragraphs", "docs", "documents/paragraphs.json", 176),
    ("qac", "qac", "chatbot-qac-pairs/train.json", 192)])
def test_seed_json_files_train_their_approach(tmp_path, key, approach, name, rows):
    config = mini_config(tmp_path, f"data.{key}={SEED / name}", f"train.approach={approach}")
    data_stage.run(config)
    splits = load_examples(config)
    assert len(splits["train"]) + len(splits["eval"]) == rows
