"""How high an answer drawn from the retrieved passages can score: for every test question, the sentence of its
top-k retrieved passages closest to the reference answer (rapidfuzz token_set_ratio: an oracle that reads the
reference, which no model can; the extractive baseline picks its sentence by the question instead), written two ways
and scored by `raftune evaluate --answers`:

- `oracle-quote`: the RAFT answer raftune trains (the sentence quoted, then `<ANSWER>:` and the same sentence),
- `oracle-bare`: the sentence alone.

No model runs: it bounds what a model answering in the RAFT format can reach with the passages it is given, and so
how far a finetuned model's interval can get from its base's.

    .venv/bin/python bench/answer_ceiling.py --config configs/seed-pdfs-qwen-3-passages.yaml --out /tmp/ceiling \\
        [key=value ...]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rapidfuzz import fuzz

from raftune.answer import format_answer
from raftune.config import load_config
from raftune.data.raft import best_sentence
from raftune.data.retrieval import contexts
from raftune.data.testset import load_testset
from raftune.evaluate.results import results_table
from raftune.evaluate.stage import score_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe")
    args = parser.parse_args()

    config = load_config(args.config, args.overrides)
    items = load_testset(config.evaluate.testset)
    passages, _ = contexts(config, items)
    rows = []
    for item, found in zip(items, passages):
        # the best of each passage's best: the first of equals, as over all their sentences at once
        best = max((best_sentence(item.reference, passage["text"]) for passage in found),
                   key=lambda s: fuzz.token_set_ratio(item.reference, s))
        for model, answer in (("oracle-quote", format_answer(best, best)), ("oracle-bare", best)):
            rows.append({"model": model, "test_id": item.test_id, "question_id": item.question_id, "answer": answer})
    args.out.mkdir(parents=True, exist_ok=True)
    recorded = args.out / "answers.jsonl"
    recorded.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    score_file(config, config.evaluate.testset, str(recorded), str(args.out / "scores"))
    print(f"top {config.evaluate.top_k} passages of {config.evaluate.retriever} retrieval, {len(items)} questions")
    print(results_table(args.out / "scores"))


if __name__ == "__main__":
    main()
