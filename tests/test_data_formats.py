"""Every seed data shape loads from every container; inspect and clean report honest, pinned numbers."""

import json
import re

import numpy as np
import pytest

from raftune import RaftuneError
from raftune.cli import main
from raftune.data.clean import clean, quote_status
from raftune.data.formats import load_rows, parse_context_repr
from raftune.data.language import language

from conftest import SHARED, mini_config

SEED = SHARED / "seed-data"
needs_seed = pytest.mark.skipif(not SEED.is_dir(), reason=f"seed data not found at {SEED} (../shared is absent)")

DOCS = ['He said "stop" and left.\nNew line', "it's the oracle, with 'single' quotes and enough words to count", "third (3) doc"]


def raft_record(context, cot="Im Kontext: ##begin_quote##the oracle##end_quote##\n<ANSWER>: x", **extra):
    return {"id": "r0", "type": "general", "question": "Was gilt?", "context": context,
            "oracle_context": DOCS[1], "cot_answer": cot, "instruction": "...", **extra}


def numpy_repr_context(docs):
    """What the seed's hand-cleaned file holds: the repr of a dict of numpy object arrays."""
    inner = np.empty(1, dtype=object)
    inner[0] = np.array(docs, dtype=object)
    return repr({"sentences": inner, "title": np.array([np.array(["a"] * len(docs), dtype=object)], dtype=object)})


def test_repr_context_parses_every_document_intact():
    text = numpy_repr_context(DOCS)
    assert "array(" in text and "dtype=object" in text
    assert parse_context_repr(text)["sentences"] == [DOCS]
    # a 2-D repr (numpy merges equal-length rows) parses the same
    assert parse_context_repr(repr({"sentences": np.array([DOCS], dtype=object)}))["sentences"] == [DOCS]


def test_repr_context_is_never_executed():
    with pytest.raises(ValueError):
        parse_context_repr("{'sentences': __import__('os').system('echo pwned')}")


@pytest.mark.parametrize("container", ["json", "jsonl", "arrow", "arrow-ipc-file", "parquet", "disk"])
def test_all_containers_and_raft_shapes_normalise_alike(tmp_path, container):
    import pyarrow as pa
    from datasets import Dataset

    structured = [raft_record({"sentences": [DOCS], "title": [["a", "b", "c"]]})]
    as_repr = [raft_record(numpy_repr_context(DOCS))]
    for name, records in (("raft", structured), ("raft-repr", as_repr)):
        path = tmp_path / f"{name}.{container}"
        if container == "json":
            path.write_text(json.dumps(records))
        elif container == "jsonl":
            path.write_text("\n".join(json.dumps(r) for r in records))
        elif container == "arrow":
            # the Arrow stream file datasets writes (as the seed's data.arrow)
            Dataset.from_list(records).save_to_disk(str(tmp_path / f"{name}-disk"))
            path = next((tmp_path / f"{name}-disk").glob("*.arrow"))
        elif container == "arrow-ipc-file":  # the Arrow file format pyarrow.feather and pa.ipc.new_file write
            path, table = tmp_path / f"{name}.arrow", pa.Table.from_pylist(records)
            with pa.ipc.new_file(str(path), table.schema) as writer:
                writer.write_table(table)
        elif container == "parquet":
            Dataset.from_list(records).to_parquet(str(path))
        else:
            Dataset.from_list(records).save_to_disk(str(path))
        shape, rows, skipped, _ = load_rows(path)
        assert shape == name and not skipped
        assert rows[0].documents == DOCS and rows[0].oracle_index == 1 and rows[0].final_answer == "x"


def write_broken(tmp_path, container):
    """A file of each format that its reader cannot read, or a format no reader takes."""
    if container == "disk":
        folder = tmp_path / "rows"
        folder.mkdir()
        (folder / "notes.txt").write_text("no dataset here")
        return folder
    names = {"json": "rows.json", "jsonl": "rows.jsonl", "arrow": "rows.arrow", "parquet": "rows.parquet",
             "csv": "rows.csv", "none": "rows"}
    path = tmp_path / names[container]
    path.write_text('{"question": "Q?"}\n{"question": ' if container == "jsonl" else '[{"question": ')
    return path


@pytest.mark.parametrize("container, message", [
    ("json", r"not valid JSON \(Expecting value: line 1 column 15 \(char 14\)\); expected a JSON list of objects$"),
    ("jsonl", r"row 1: not valid JSON \(Expecting value\); expected one JSON object a line$"),
    ("arrow", r"not readable as an Arrow file \(ArrowInvalid: .+\)$"),
    ("parquet", r"not readable as a Parquet file \(ArrowInvalid: .+\)$"),
    ("disk", r"not readable as a datasets save_to_disk folder \(FileNotFoundError: .+\)$"),
    ("csv", r"unknown data format '.csv' \(expected JSON \(.json, a list of objects\), JSONL \(.jsonl\), an Arrow "
            r"file \(.arrow\), Parquet \(.parquet\) or a datasets save_to_disk folder\)$"),
    ("none", r"unknown data format 'rows' \(expected JSON"),
], ids=["json", "jsonl", "arrow", "parquet", "disk", "csv", "none"])
def test_a_broken_file_or_an_unknown_format_is_one_line_naming_the_file_and_what_was_expected(tmp_path, capsys, container,
                                                                                             message):
    from raftune.data.corpus import load_qac

    path = write_broken(tmp_path, container)
    assert main(["data", "inspect", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and re.match(f"raftune: error: {re.escape(str(path))}: {message}", err.strip())
    with pytest.raises(RaftuneError, match=f"^{re.escape(str(path))}: {message}"):  # data.qac: the same loader
        load_qac(path)


def test_bad_rows_name_file_row_and_field_or_are_skipped_and_counted(tmp_path):
    path = tmp_path / "bad.json"
    good = raft_record({"sentences": [DOCS]})
    missing = {k: v for k, v in good.items() if k != "cot_answer"}
    missing["cot_answer"] = None
    broken = raft_record("{'sentences': array([[unclosed")
    path.write_text(json.dumps([good, missing]))
    with pytest.raises(RaftuneError, match=r"bad.json: row 1: missing field 'cot_answer'"):
        load_rows(path)
    path.write_text(json.dumps([raft_record(numpy_repr_context(DOCS)), broken]))
    with pytest.raises(RaftuneError, match=r"bad.json: row 1: field 'context'"):
        load_rows(path)
    report = clean(path, tmp_path / "out", skip_bad=True)
    assert report["rows_read"] == 2 and report["unreadable_skipped"] == 1
    assert report["skipped"][0]["row"] == 1 and report["skipped"][0]["field"] == "context"
    assert report["kept"] + sum(report["rejected"].values()) == 1


def test_non_utf8_file_is_named(tmp_path):
    path = tmp_path / "latin1.json"
    path.write_bytes('[{"paragraph": "Prüfung"}]'.encode("latin-1"))
    with pytest.raises(RaftuneError, match="latin1.json: not UTF-8"):
        load_rows(path)


def test_quote_checks():
    context = 'Die Frist beträgt 14 Tage \nnach der „Anmeldung".'
    assert quote_status("Die Frist beträgt 14 Tage", [context])[0] == "verbatim"
    status, exact = quote_status(' "Die Frist beträgt 14 Tage nach der "Anmeldung"." ', [context])
    assert status == "normalised" and exact == 'Die Frist beträgt 14 Tage \nnach der „Anmeldung".'
    assert quote_status("Die Frist beträgt 30 Tage", [context])[0] == "missing"


def test_clean_repairs_quotes_and_keeps_reasons(tmp_path):
    rows = [
        raft_record({"sentences": [DOCS]}),  # verbatim quote: kept
        raft_record({"sentences": [DOCS]}, question="Welche Quotes?",
                    cot='##begin_quote## "it\'s   the oracle" ##end_quote## <ANSWER>: y'),  # repairable
        raft_record({"sentences": [DOCS]}, question="Your request seems unclear. Could you provide a context?"),
        raft_record({"sentences": [DOCS]}, question="Was gilt sonst?", cot="no marker ##begin_quote##the oracle##end_quote##"),
        raft_record({"sentences": [DOCS]}),  # duplicate of row 0
    ]
    path = tmp_path / "rows.jsonl"
    path.write_text("\n".join(json.dumps(r) for r in rows))
    plain = clean(path, tmp_path / "plain")
    assert plain["kept"] == 1
    assert {k: v for k, v in plain["rejected"].items() if v} == {
        "quote_not_verbatim": 1, "not_a_question": 1, "no_answer_marker": 1, "duplicate": 1}
    repaired = clean(path, tmp_path / "repaired", repair=True)
    assert repaired["kept"] == 2
    kept = [json.loads(line) for line in (tmp_path / "repaired" / "clean.jsonl").read_text().splitlines()]
    assert "##begin_quote##it's the oracle##end_quote##" in kept[1]["cot_answer"]
    assert "| duplicate | 1 |" in (tmp_path / "repaired" / "report.md").read_text()


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    """Every data file raftune writes: a build from the mini corpus, `data clean` of its RAFT rows, and a build from
    its RAFT rows given as data.raft."""
    from raftune.data import stage as data_stage

    tmp = tmp_path_factory.mktemp("written")
    corpus = data_stage.run(mini_config(tmp / "corpus"))
    clean(corpus / "hf_train.jsonl", tmp / "clean")
    given = data_stage.run(mini_config(tmp / "given", f"data.raft={corpus / 'hf_train.jsonl'}"))
    return {"corpus": corpus, "clean": tmp / "clean", "given": given}


def rows_written(path) -> int:
    if path.is_dir():
        from datasets import load_from_disk

        return load_from_disk(str(path)).num_rows
    return len([line for line in path.read_text(encoding="utf-8").split("\n") if line.strip()])


SPLITS = ("train", "eval")
WRITTEN = [("corpus", "chunks.jsonl", "paragraphs"), ("clean", "clean.jsonl", "raft-documents"),
           ("given", "clean/clean.jsonl", "raft-documents")] + [
    (stage, name.format(split), shape) for stage in ("corpus", "given") for split in SPLITS
    for name, shape in (("hf_{}.jsonl", "raft"), ("raft/{}", "raft"), ("qac_{}.jsonl", "qac"),
                        ("docs_{}.jsonl", "paragraphs"), ("completion_{}.jsonl", "completion"), ("chat_{}.jsonl", "chat"))]
# the data key that takes each shape, and how it reads the file (the rows it keeps: every row of these files)
KEY_READERS = {"raft": "data.raft", "raft-documents": "data.raft", "qac": "data.qac", "paragraphs": "data.paragraphs"}


@pytest.mark.parametrize("stage, name, shape", WRITTEN)
def test_every_data_file_raftune_writes_is_read_by_inspect_and_its_data_key(written, tmp_path, capsys, stage, name, shape):
    from raftune.data import given

    path = written[stage] / name
    assert main(["data", "inspect", "--json", str(path)]) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["shape"], report["rows"]) == (shape, rows_written(path)) and report["rows"] > 0
    if shape in ("raft", "raft-documents", "completion", "chat"):
        assert report["answer_marker"] == 1.0  # every row raftune writes ends with <ANSWER>:
    key = KEY_READERS.get(shape)
    if key == "data.raft":
        rows, _ = given.raft_rows(path, "off", tmp_path)
    elif key == "data.qac":
        rows = given.qac_rows(path)
    elif key == "data.paragraphs":
        rows = given.paragraph_rows(path)
    else:  # training text: no key takes it, and the key says so
        with pytest.raises(RaftuneError, match=rf"data.raft: .* holds {shape} rows .* no data key takes it"):
            given.raft_rows(path, "off", tmp_path)
        return
    assert len(rows) == report["rows"]


def test_clean_output_is_cleaned_again_unchanged_trains_and_is_a_test_set(written, tmp_path):
    from raftune.data import stage as data_stage
    from raftune.data.testset import load_testset
    from raftune.train import load_examples

    path = written["clean"] / "clean.jsonl"
    again = clean(path, tmp_path / "again")
    assert again["shape"] == "raft-documents" and again["rows_read"] == again["kept"] == rows_written(path)
    assert (tmp_path / "again" / "clean.jsonl").read_text() == path.read_text()
    config = mini_config(tmp_path / "runs", f"data.raft={path}")
    data_stage.run(config)
    splits = load_examples(config)
    assert sorted(r["question"] for r in [*splits["train"], *splits["eval"]]) == \
        sorted(json.loads(line)["question"] for line in path.read_text().splitlines())
    items = load_testset(path)
    kept = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(i.question, i.documents, i.reference) for i in items] == \
        [(r["question"], r["documents"], r["final_answer"]) for r in kept]


LANGUAGE_ROWS = [  # (question, reasoning answer): three German questions, two English; the answers the other way round
    ("Wie lange dauert die Frist für die Anmeldung zur Prüfung?",
     "Im Kontext steht: ##begin_quote##Die Frist beträgt 14 Tage.##end_quote## Die Anmeldung ist also zwei Wochen lang "
     "möglich.\n<ANSWER>: Die Frist beträgt vierzehn Tage."),
    ("Wer entscheidet über die Anerkennung von Leistungen?",
     "##begin_quote##Über die Anerkennung entscheidet der Prüfungsausschuss.##end_quote## The context says that the "
     "examination board decides on this.\n<ANSWER>: The examination board decides."),
    ("Wie oft darf ich eine Prüfung wiederholen?",  # no <ANSWER>: rejected by clean
     "Eine nicht bestandene Prüfung darf zweimal wiederholt werden, sagt die Ordnung ##begin_quote##the oracle##end_quote##"),
    ("How many credits does the bachelor thesis carry?",
     "According to the document, ##begin_quote##Die Bachelorarbeit umfasst 12 Leistungspunkte.##end_quote## so the "
     "thesis is worth twelve credits.\n<ANSWER>: The thesis is worth twelve credits."),
    ("When does the registration period for the summer semester end?",
     "The regulation states ##begin_quote##Die Rückmeldefrist endet am 10. Februar.##end_quote## which is the last day "
     "to register.\n<ANSWER>: It ends on the tenth of February."),
]


def language_rows(tmp_path):
    docs = [DOCS[0], "Die Frist beträgt 14 Tage. Über die Anerkennung entscheidet der Prüfungsausschuss. Die "
            "Bachelorarbeit umfasst 12 Leistungspunkte. Die Rückmeldefrist endet am 10. Februar. the oracle"]
    path = tmp_path / "languages.jsonl"
    path.write_text("\n".join(json.dumps(raft_record({"sentences": [docs]}, question=q, cot=a, oracle_context=docs[1]))
                               for q, a in LANGUAGE_ROWS))
    return path


def test_inspect_and_clean_report_the_share_of_rows_per_language(tmp_path, capsys):
    path = language_rows(tmp_path)
    assert main(["data", "inspect", "--json", str(path)]) == 0
    assert json.loads(capsys.readouterr().out)["languages"] == {"question": {"de": 3, "en": 2},
                                                                "answer": {"en": 3, "de": 2}}
    assert main(["data", "inspect", str(path)]) == 0
    out = capsys.readouterr().out
    assert "question language: de 60.0% (3), en 40.0% (2)\nanswer language: en 60.0% (3), de 40.0% (2)" in out
    report = clean(path, tmp_path / "out")
    assert report["kept"] == 4 and report["rejected"]["no_answer_marker"] == 1
    assert report["languages"] == {"question": {"de": 2, "en": 2}, "answer": {"en": 3, "de": 1}}
    assert ("question de 50.0% (2), en 50.0% (2); answer en 75.0% (3), de 25.0% (1)."
            in (tmp_path / "out" / "report.md").read_text())


def test_a_text_without_letters_is_in_no_language():
    assert [language(t) for t in ("", "  § 3 (2) 14.", "Die Prüfung dauert zwei Stunden.")] == ["none", "none", "de"]


@needs_seed
def test_inspect_reports_the_seed_files(capsys):
    expected = {"raft/data.arrow": (452, "raft"), "chatbot-qac-pairs/train.json": (192, "qac"),
                "chatbot-qac-pairs/validation.json": (48, "qac"), "chatbot-documents/train.json": (140, "paragraphs"),
                "chatbot-documents/validation.json": (36, "paragraphs")}
    for name, (rows, shape) in expected.items():
        assert main(["data", "inspect", "--json", str(SEED / name)]) == 0
        report = json.loads(capsys.readouterr().out)
        assert (report["rows"], report["shape"]) == (rows, shape)
        assert report["columns"]
    assert main(["data", "inspect", "--json", str(SEED / "raft/data.arrow")]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["documents_per_row"] == {"4": 452}
    assert report["oracle_present"] == 0.7898 and report["answer_marker"] == 0.8938


@needs_seed
def test_cleaning_the_seed_raft_rows_is_pinned(tmp_path):
    report = clean(SEED / "raft" / "data.arrow", tmp_path, repair=True)
    assert report["rows_read"] == 452 == report["kept"] + sum(report["rejected"].values())
    assert report["kept"] == 184
    assert report["rejected"] == {"not_a_question": 127, "oracle_too_short": 2, "no_answer_marker": 2, "no_quote": 82,
                                  "quote_not_in_context": 54, "quote_not_verbatim": 0, "duplicate": 1, "too_long": 0}
    assert report["quotes"] == {"total": 335, "verbatim": 30, "normalised": 240, "missing": 65}
