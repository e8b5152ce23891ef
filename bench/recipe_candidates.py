"""Training settings judged by the answers they give: each candidate (a set of key=value overrides of one recipe) is
trained by `raftune train` on the recipe's data stage, answers the recipe's test set greedily from the retrieved
passages (the evaluation's retriever and renderer, the finetuned model as base + adapter), and all answers are
scored together by `raftune evaluate --answers` with bootstrap intervals, beside the untrained base.

    .venv/bin/python bench/recipe_candidates.py --config configs/demo.yaml --out /tmp/candidates [key=value ...] \\
        --candidate "sft.num_train_epochs=2 sft.learning_rate=2.0e-3" --candidate "sft.num_train_epochs=3"

The recipe itself (with the key=value overrides, which apply to every candidate) is always the first candidate. On a
GPU each candidate takes about a minute for SmolLM2 on the demo set; training there is the same code path as on the
CPU, so the answers are the same up to float rounding. A GPU machine without the retrieval and scoring models can
take the data stage and the retrieved passages from a machine that has them, and leave the scoring to it:

    here:  .venv/bin/python bench/recipe_candidates.py --config C --out /tmp/prep --prepare [key=value ...]
    there: python bench/recipe_candidates.py --config C --out OUT --prepared /tmp/prep --no-score [key=value ...] ...
    here:  .venv/bin/raftune evaluate --config C --answers OUT/answers.jsonl --out /tmp/scores

Given `--prepared` several times, the candidates train on the RAFT rows of all those data stages together (a mixture
of sources: the demo's rows and rows written from the user's PDFs, say), and answer from the first one's passages.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

from raftune.config import load_config
from raftune.data import stage as data_stage
from raftune.data.retrieval import contexts
from raftune.data.testset import load_testset
from raftune.data.generators import ResponseCache
from raftune.evaluate.results import results_table
from raftune.evaluate.stage import answer_all, score_file
from raftune.models import resolve_base


def answers(name: str, spec: dict, config, items, ctx, cache: ResponseCache) -> list[dict]:
    """The evaluation's own answering (renderer, batching, greedy decoding) with its answer cache, keyed by the
    model's weight files: a rerun into the same folder reuses the base model's answers."""
    rows = answer_all(config, [{"name": name, "kind": "hf", **spec}], items, ctx, cache)
    return [{key: row[key] for key in ("model", "test_id", "question_id", "answer")} for row in rows]


def mixed(folders: list[Path], run: str, out: Path) -> Path:
    """The data stage of the first prepared folder, its RAFT rows joined by every other folder's, split by split (the
    columns all of them have)."""
    import datasets

    stages = [folder / "runs" / run / "data" for folder in folders]
    if len(stages) == 1:
        return stages[0]
    parts = [datasets.load_from_disk(str(stage / "raft")) for stage in stages]
    columns = [c for c in parts[0]["train"].column_names if all(c in p["train"].column_names for p in parts)]
    joined = datasets.DatasetDict({split: datasets.concatenate_datasets(
        [p[split].select_columns(columns).cast(parts[0][split].select_columns(columns).features) for p in parts])
        for split in parts[0]})
    shutil.copytree(stages[0], out, ignore=shutil.ignore_patterns("raft"), dirs_exist_ok=True)
    joined.save_to_disk(str(out / "raft"))
    print(f"mixed: {' + '.join(str(len(p['train'])) for p in parts)} training rows -> {out}", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--candidate", action="append", default=[], help="space-separated key=value overrides")
    parser.add_argument("--prepare", action="store_true", help="only run the data stage and retrieve the passages")
    parser.add_argument("--prepared", type=Path, action="append", default=[],
                        help="a folder --prepare wrote: its data stage and passages are used; several: their rows mixed")
    parser.add_argument("--no-score", action="store_true", help="write the answers, leave the scoring")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the recipe, for every candidate")
    args = parser.parse_args()

    runs = args.out / "runs"
    config = load_config(args.config, [*args.overrides, f"runs_dir={runs}"])
    items = load_testset(config.evaluate.testset)
    if args.prepared:
        data_dir = mixed(args.prepared, config.run, args.out / "mixed")
        ctx = json.loads((args.prepared[0] / "contexts.json").read_text(encoding="utf-8"))
    else:
        data_dir = data_stage.run(config)
        ctx, _ = contexts(config, items)
        (args.out / "contexts.json").write_text(json.dumps(ctx, ensure_ascii=False), encoding="utf-8")
    if args.prepare:
        print(f"prepared: {data_dir} and {args.out / 'contexts.json'}")
        return
    base = resolve_base(config)
    cache = ResponseCache(args.out / "responses.jsonl")
    rows = answers("base", {"path": base}, config, items, ctx, cache)
    for n, overrides in enumerate(["", *args.candidate]):
        name = f"c{n}"
        shutil.copytree(data_dir, runs / name / "data", dirs_exist_ok=True)
        command = [sys.executable, "-m", "raftune", "train", "--config", args.config, *args.overrides,
                   f"runs_dir={runs}", f"run={name}", *overrides.split()]
        subprocess.run(command, check=True)
        adapter = runs / name / "train" / "adapter"
        rows += answers(name, {"path": base, "adapter": str(adapter)}, config, items, ctx, cache)
        print(f"{name}: {overrides or '(the recipe as it is)'}", flush=True)
    recorded = args.out / "answers.jsonl"
    recorded.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    if args.no_score:
        print(f"answers: {recorded} (score: raftune evaluate --config {args.config} --answers {recorded} --out DIR)")
        return
    score_file(config, config.evaluate.testset, str(recorded), str(args.out / "scores"))
    print(results_table(args.out / "scores"))


if __name__ == "__main__":
    main()
