"""The seed's evaluation shape: {"tests": [{"id", "questions": [...], "answers": [...]}]}."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from raftune import RaftuneError


@dataclass
class Item:
    test_id: int
    question_id: int
    question: str
    specificity: float
    relevance: float
    reference: str
    keywords: list[str]
    cite_document: str
    cite_pages: list[int]


def load_testset(path: str | Path) -> list[Item]:
    """One Item per question, paired with the test's first answer (its reference)."""
    path = Path(path)
    if not path.is_file():
        raise RaftuneError(f"test set not found: {path}")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise RaftuneError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, dict) or not isinstance(data.get("tests"), list):
        raise RaftuneError(f"{path}: expected an object with a list 'tests'")
    items = []
    for t, test in enumerate(data["tests"]):
        where = f"{path}: tests[{t}]"
        try:
            answer = test["answers"][0]
            keywords = answer["keywords"]
            if not keywords or not all(isinstance(k, str) for k in keywords):
                raise RaftuneError(f"{where}: field 'answers[0].keywords' must be a non-empty list of strings")
            for q in test["questions"]:
                items.append(Item(int(test["id"]), int(q["id"]), str(q["text"]),
                                  float(q["quality"]["specificity"]), float(q["quality"]["relevance"]),
                                  str(answer["text"]), list(keywords), str(answer["cite"]["document"]),
                                  [int(p) for p in answer["cite"]["page"]]))
        except (KeyError, IndexError, TypeError, ValueError) as err:
            raise RaftuneError(f"{where}: missing or malformed field {err} (expected id, questions[{{id, text, "
                               f"quality}}], answers[{{text, keywords, cite}}])") from None
    return items
