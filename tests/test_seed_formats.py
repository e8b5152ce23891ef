"""The seed team's real files load (skipped with a reason when ../shared is not beside the checkout)."""

import json

import pytest

from raftune.data.corpus import load_qac

from conftest import SHARED

SEED = SHARED / "seed-data"
pytestmark = pytest.mark.skipif(not SEED.is_dir(), reason=f"seed data not found at {SEED} (../shared is absent)")


def test_seed_qac_pairs_load():
    rows = load_qac(SEED / "chatbot-qac-pairs" / "train.json")
    assert len(rows) == len(json.loads((SEED / "chatbot-qac-pairs" / "train.json").read_text()))
    assert all(row["question"].strip() and row["context"].strip() for row in rows)


def test_seed_raft_arrow_stream_loads_with_datasets():
    from datasets import Dataset

    data = Dataset.from_file(str(SEED / "raft" / "data.arrow"))
    assert len(data) == 452
    assert {"question", "context", "oracle_context", "cot_answer"} <= set(data.column_names)
    assert set(data[0]["context"]) == {"sentences", "title"}
