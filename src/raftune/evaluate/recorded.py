"""Recorded answers: answers made elsewhere (another tool, a proprietary API, a baseline) join the comparison.

File: JSONL, one object per answer: {"model": str, "test_id": int, "question_id": int, "answer": str}; optional
"new_tokens", "seconds". One file may hold several models; every model must answer every question of the test set.

`extractive_baseline` writes the demo's recorded model (datasets/demo/recorded/): no language model at all, the
sentence of the top retrieved passage that best matches the question, quoted and repeated as the final answer.
"""

from __future__ import annotations

import math
from pathlib import Path

from raftune import RaftuneError
from raftune.answer import format_answer
from raftune.config import load_config
from raftune.data.raft import split_sentences
from raftune.data.formats import read_records
from raftune.data.retrieval import contexts
from raftune.data.testset import load_testset
from raftune.evaluate.providers import Answer
from raftune.manifest import write_jsonl

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


def extractive_baseline(items, retrieved) -> list[dict]:
    """A no-model baseline: the sentence of the top passage that best matches the question (rapidfuzz)."""
    from rapidfuzz import fuzz

    rows = []
    for item, passages in zip(items, retrieved):
        sentences = split_sentences(passages[0].text) if passages else [""]
        best = max(sentences, key=lambda s: fuzz.token_set_ratio(item.question, s))
        rows.append({"model": "extractive-baseline", "test_id": item.test_id, "question_id": item.question_id,
                     "answer": format_answer(best, best)})
    return rows


def write_extractive_baseline(config, out: str | Path) -> int:
    """The baseline's answers for the recipe's test set, with the evaluation's own retrieval (top_k passages)."""

    items = load_testset(config.evaluate.testset)
    context, _ = contexts(config, items)

    class _Passage:  # the baseline reads only .text
        def __init__(self, text):
            self.text = text

    rows = extractive_baseline(items, [[_Passage(c["text"]) for c in ctx] for ctx in context])
    write_jsonl(out, rows)
    return len(rows)


if __name__ == "__main__":  # python -m raftune.evaluate.recorded CONFIG OUT [key=value ...]
    import sys

    count = write_extractive_baseline(load_config(sys.argv[1], sys.argv[3:]), sys.argv[2])
    print(f"{count} extractive-baseline answers -> {sys.argv[2]}")
