"""Test sets: the seed's evaluation JSON, or the held-out split of a RAFT dataset.

Seed shape: {"tests": [{"id", "questions": [{"id", "text", "quality": {"specificity", "relevance"}}],
                        "answers": [{"id", "text", "correctness", "keywords": [...], "cite": {"document", "page": [...]}}]}]}
Every question of a test is paired with the test's first answer (its reference).

RAFT rows (raftune's `runs/<run>/data/hf_eval.jsonl` or `data clean`'s clean.jsonl, any seed RAFT shape, or QAC
triplets, in any data format of raftune.data.formats): each row is one question with its own documents (the "given"
context) and its reference answer (the text after `<ANSWER>:`); rows of one question are phrasings of one test.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from raftune import RaftuneError
from raftune.data.formats import load_rows, read_records


@dataclass
class Item:
    test_id: int
    question_id: int
    question: str
    specificity: float
    relevance: float
    reference: str
    keywords: list[str]
    cite_document: str | None
    cite_pages: list[int]
    documents: list[str] | None = None  # the given context (RAFT rows); None: retrieve it
    cited_texts: list[str] = field(default_factory=list)  # the passages the test cites, for citation correctness

    @property
    def key(self) -> tuple[int, int]:
        return self.test_id, self.question_id

    @property
    def weight(self) -> float:
        """The seed's question quality weight: a vague or off-topic phrasing counts less."""
        return self.specificity * self.relevance


SEED_SHAPE = ('{"tests": [{"id", "questions": [{"id", "text", "quality": {"specificity", "relevance"}}], '
              '"answers": [{"text", "keywords": [...], "cite": {"document", "page": [...]}}]}]}')


def _seed_test(test, where: str) -> list[Item]:
    if not isinstance(test, dict):
        raise RaftuneError(f"{where}: expected an object, got {type(test).__name__}")
    for key in ("id", "questions", "answers"):
        if key not in test:
            raise RaftuneError(f"{where}: missing field '{key}' (expected {SEED_SHAPE})")
    if not test["answers"]:
        raise RaftuneError(f"{where}: field 'answers' is empty; the first answer is the reference")
    answer = test["answers"][0]
    keywords = answer.get("keywords")
    if not keywords or not isinstance(keywords, list) or not all(isinstance(k, str) and k.strip() for k in keywords):
        raise RaftuneError(f"{where}: field 'answers[0].keywords' must be a non-empty list of strings, got {keywords!r}")
    try:
        cite = answer["cite"]
        reference, document, pages = str(answer["text"]), str(cite["document"]), [int(p) for p in cite["page"]]
    except (KeyError, TypeError, ValueError) as err:
        raise RaftuneError(f"{where}: field 'answers[0]' missing or malformed {err} (expected text, keywords, "
                           f"cite {{document, page: [...]}})") from None
    items = []
    for q, question in enumerate(test["questions"]):
        try:
            items.append(Item(int(test["id"]), int(question["id"]), str(question["text"]),
                              float(question["quality"]["specificity"]), float(question["quality"]["relevance"]),
                              reference, list(keywords), document, pages))
        except (KeyError, TypeError, ValueError) as err:
            raise RaftuneError(f"{where}: questions[{q}]: field {err} missing or malformed (expected id, text, "
                               f"quality {{specificity, relevance}})") from None
    return items


def load_seed_testset(path: Path, data) -> list[Item]:
    if not isinstance(data, dict) or not isinstance(data.get("tests"), list):
        raise RaftuneError(f"{path}: expected an object with a list 'tests' ({SEED_SHAPE})")
    items = []
    for t, test in enumerate(data["tests"]):
        items.extend(_seed_test(test, f"{path}: tests[{t}]"))
    return items


def load_raft_testset(path: Path) -> list[Item]:
    """One Item per RAFT row; test id = the question (raftune's question_index, else the question text)."""

    shape, rows, _, _ = load_rows(path)
    if not (shape.startswith("raft") or shape == "qac"):
        raise RaftuneError(f"{path}: a test set holds RAFT rows or QAC triplets (or is the seed's test set JSON, "
                           f"{SEED_SHAPE}); found {shape} rows")
    records, _ = read_records(path)
    tests: dict = {}
    phrasings: dict = {}
    items = []
    for n, (row, record) in enumerate(zip(rows, records)):
        if row.question is None or row.final_answer is None:
            raise RaftuneError(f"{path}: row {n}: a RAFT test row needs 'question' and a 'cot_answer' with <ANSWER>:")
        group = record.get("question_index", row.question)
        test_id = tests.setdefault(group, len(tests) + 1)
        phrasing = phrasings[test_id] = phrasings.get(test_id, 0) + 1
        oracle = [row.documents[row.oracle_index]] if row.oracle_index is not None else \
            [record["oracle_context"]] if isinstance(record.get("oracle_context"), str) else []
        page = record.get("page")
        items.append(Item(test_id, phrasing, row.question, 1.0, 1.0, str(record.get("answer") or row.final_answer),
                          [], record.get("document"), [int(page)] if page is not None else [],
                          documents=list(row.documents), cited_texts=oracle))
    return items


def load_testset(path: str | Path) -> list[Item]:
    path = Path(path)
    if not path.exists():
        raise RaftuneError(f"test set not found: {path}")
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise RaftuneError(f"{path}: not valid JSON ({err}); expected the seed's test set or a list of RAFT rows") \
                from None
        except UnicodeDecodeError as err:
            raise RaftuneError(f"{path}: not UTF-8 text (byte {err.start}: {err.reason})") from None
        items = load_seed_testset(path, data) if isinstance(data, dict) else load_raft_testset(path)
    else:
        items = load_raft_testset(path)
    if not items:
        raise RaftuneError(f"{path}: the test set has no questions")
    seen = set()
    for item in items:
        if item.key in seen:
            raise RaftuneError(f"{path}: test {item.test_id} has question id {item.question_id} twice")
        seen.add(item.key)
    return items
