"""`raftune data build`: corpus + QAC triplets -> RAFT rows (Arrow via datasets, and JSONL) with a manifest."""

from __future__ import annotations

from datasets import Dataset, DatasetDict
from datasets.utils.logging import disable_progress_bar

from raftune.config import RunConfig
from raftune.data.corpus import load_corpus, load_qac
from raftune.data.raft import build_rows, split_by_question
from raftune.manifest import Stage, write_jsonl


def run(config: RunConfig):
    cfg = config.data
    stage = Stage(config, "data", {"corpus": cfg.corpus, "qac": cfg.qac})
    chunks = load_corpus(cfg.corpus)
    qac = load_qac(cfg.qac)
    rows = build_rows(chunks, qac, cfg.num_distractors, cfg.oracle_probability, cfg.rows_per_question,
                      cfg.seed, source=cfg.qac)
    train, evaluation = split_by_question(rows, cfg.eval_fraction, cfg.seed)

    write_jsonl(stage.dir / "chunks.jsonl", [c.to_dict() for c in chunks])
    write_jsonl(stage.dir / "raft_train.jsonl", train)
    write_jsonl(stage.dir / "raft_eval.jsonl", evaluation)
    disable_progress_bar()  # a bar per split for a few hundred rows is noise
    DatasetDict({"train": Dataset.from_list(train), "eval": Dataset.from_list(evaluation)}).save_to_disk(
        str(stage.dir / "raft"))
    stage.outputs = {"chunks": len(chunks), "train_rows": len(train), "eval_rows": len(evaluation),
                     "with_oracle": sum(r["oracle_index"] is not None for r in rows), "dataset": str(stage.dir / "raft")}
    stage.finish()
    print(f"data: {len(chunks)} chunks, {len(train)} train / {len(evaluation)} eval RAFT rows -> {stage.dir}")
    return stage.dir
