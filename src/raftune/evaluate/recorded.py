"""Recorded answers: answers made elsewhere (another tool, a proprietary API, a baseline) join the comparison.

File: JSONL, one object per answer: {"model": str, "test_id": int, "question_id": int, "answer": str}; optional
"new_tokens", "seconds". One file may hold several models; every model must answer every question of the test set.
"""

from __future__ import annotations

import math
from pathlib import Path

from raftune import RaftuneError
from raftune.data.formats import read_records
from raftune.evaluate.providers import Answer

FIELDS = {"model": str, "test_id": int, "question_id": int, "answer": str}
SHAPE = '{"model": str, "test_id": int, "question_id": int, "answer": str}'


def read_recorded(path: str | Path) -> dict[str, dict[tuple[int, int], dict]]:
    """{model: {(test_id, question_id): record}}; a malformed row raises an error naming file, row and field."""
    path = Path(path)
    if not path.is_file():
        raise RaftuneError(f"recorded answers file not found: {path}")
    records, _ = read_records(path)  # JSONL; rows counted from 0, as every data file's
    models: dict[str, dict] = {}
    for n, record in enumerate(records):
        for field, kind in FIELDS.items():
            if field not in record:
                raise RaftuneError(f"{path}: row {n}: missing field '{field}' (expected {SHAPE})")
            if not isinstance(record[field], kind) or isinstance(record[field], bool):
                raise RaftuneError(f"{path}: row {n}: field '{field}' must be {kind.__name__}, "
                                   f"got {type(record[field]).__name__}")
        key = (record["test_id"], record["question_id"])
        answers = models.setdefault(record["model"], {})
        if key in answers:
            raise RaftuneError(f"{path}: row {n}: model '{record['model']}' answers test {key[0]} question {key[1]} twice")
        answers[key] = record
    if not models:
        raise RaftuneError(f"{path}: no answers (expected JSONL lines {SHAPE})")
    return models


def recorded_models(spec: dict, items) -> dict[str, dict]:
    """The models of a `recorded` spec, each checked to answer exactly the test set's questions."""
    path = spec["path"]
    models = read_recorded(path)
    if spec.get("model"):
        if spec["model"] not in models:
            raise RaftuneError(f"{path}: no answers of model '{spec['model']}' (models in the file: {', '.join(models)})")
        models = {spec.get("name") or spec["model"]: models[spec["model"]]}
    elif spec.get("name") and len(models) == 1:
        models = {spec["name"]: next(iter(models.values()))}
    wanted = {item.key for item in items}
    for model, answers in models.items():
        missing = sorted(wanted - set(answers))
        if missing:
            raise RaftuneError(f"{path}: model '{model}' has no answer for test {missing[0][0]} question "
                               f"{missing[0][1]} ({len(missing)} of {len(wanted)} questions missing; every question "
                               f"of the test set needs one)")
        extra = sorted(set(answers) - wanted)
        if extra:
            raise RaftuneError(f"{path}: model '{model}' answers test {extra[0][0]} question {extra[0][1]}, which is "
                               f"not in the test set")
    return models


def recorded_answer(record: dict):
    seconds = record.get("seconds")
    return Answer(record["answer"], int(record.get("new_tokens") or 0),
                  float(seconds) if seconds is not None else math.nan)

