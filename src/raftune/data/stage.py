"""`raftune data build`: documents -> chunks -> questions and answers -> RAFT rows, in three formats, with a manifest.

Formats (each train/eval JSONL, plus the `hf` rows as an Arrow `save_to_disk` folder that training reads):
  hf          gorilla/raft columns (id, type, question, context, oracle_context, cot_answer, instruction) and
              raftune's normalised fields (documents, oracle_index, answer, ...)
  completion  {"prompt", "completion"}: the user turn and the reasoning answer
  chat        {"messages": [user, assistant]}
"""

from __future__ import annotations

from datasets.utils.logging import disable_progress_bar
from tqdm import tqdm

from datasets import Dataset, DatasetDict
from raftune import RaftuneError
from raftune.chat import messages
from raftune.config import RunConfig
from raftune.data import given
from raftune.data.corpus import corpus_chunks, load_qac
from raftune.data.generators import make_generator
from raftune.data.raft import build_rows, split_by_question, split_by_row
from raftune.data.retrieval import build_retriever
from raftune.manifest import Stage, write_jsonl


def generate_triplets(chunks, generator, per_chunk: int) -> list[dict]:
    """Questions from the generator for every chunk (used when the config names no QAC file). A generator that decodes
    several requests together (`prefetch`, the local one) is handed `batch_size` chunks at a time."""
    triplets, step = [], getattr(generator, "batch_size", 1)
    with tqdm(total=len(chunks), desc=f"questions ({generator.name})", unit="chunk") as bar:
        for start in range(0, len(chunks), step):
            group = chunks[start:start + step]
            if step > 1:
                generator.prefetch(group, per_chunk)
            for chunk in group:
                for item in generator.questions(chunk, per_chunk):
                    triplets.append({**item, "context": chunk.text, "document": chunk.document, "page": chunk.page})
            bar.update(len(group))
    return triplets


def formats(rows: list[dict]) -> dict[str, list[dict]]:
    return {
        "hf": rows,
        "completion": [{"prompt": r["instruction"], "completion": r["cot_answer"]} for r in rows],
        "chat": [{"messages": messages(r["question"], r["documents"], r["cot_answer"])} for r in rows],
    }


def write_splits(directory, name: str, train: list[dict], evaluation: list[dict]) -> None:
    for split, rows in (("train", train), ("eval", evaluation)):
        write_jsonl(directory / f"{name}_{split}.jsonl", rows)


def write_raft(directory, train: list[dict], evaluation: list[dict], names: list[str]) -> None:
    """The RAFT rows as the `save_to_disk` folder that training reads, and as JSONL in each of `names`' formats."""
    for name in names:
        write_splits(directory, name, formats(train)[name], formats(evaluation)[name])
    disable_progress_bar()  # a bar per split for a few hundred rows is noise
    DatasetDict({"train": Dataset.from_list(train), "eval": Dataset.from_list(evaluation)}).save_to_disk(
        str(directory / "raft"))


def run_given(config: RunConfig):
    """Training rows from existing files (raftune.data.given) instead of the corpus."""
    cfg = config.data
    stage = Stage(config, "data", {"raft": cfg.raft, "clean": cfg.clean, "paragraphs": cfg.paragraphs,
                                   "qac": cfg.qac if not cfg.raft and config.train.approach == "qac" else None})
    splits, inputs = given.splits(config, stage.dir / "clean")
    for approach, (train, evaluation) in splits.items():
        if approach == "raft":
            write_raft(stage.dir, train, evaluation, cfg.formats)
        else:
            write_splits(stage.dir, approach, train, evaluation)
    stage.outputs = {"inputs": inputs, **{f"{a}_rows": {"train": len(t), "eval": len(e)} for a, (t, e) in splits.items()}}
    stage.finish()
    read = "; ".join(f"{v['input']} ({v['rows_read']} rows, data.clean={v['clean']}: {v['kept']} kept)" if "kept" in v
                     else f"{v['input']} ({v['rows']} rows)" for v in inputs.values())
    report = stage.dir / "clean" / "report.md"
    print(f"data: {read} -> {', '.join(f'{a} {len(t)} train / {len(e)} eval' for a, (t, e) in splits.items())} -> "
          f"{stage.dir}" + (f" (cleaning report: {report})" if report.is_file() else ""))
    return stage.dir


def run(config: RunConfig):
    if given.applies(config):
        return run_given(config)
    cfg = config.data
    stage = Stage(config, "data", {"corpus": cfg.corpus, "qac": cfg.qac, "generator": cfg.generator,
                                   "distractors": cfg.distractors,
                                   "generator_model": cfg.generator_model, "generator_base_url": cfg.generator_base_url})
    chunks = corpus_chunks(cfg)
    # the answer cache outlives the stage folder, so a rerun of the same run resumes where an interrupted one stopped
    generator = make_generator(cfg, config.cache_dir() / "generator.jsonl")
    qac = load_qac(cfg.qac) if cfg.qac else generate_triplets(chunks, generator, cfg.questions_per_chunk)
    if not qac:
        raise RaftuneError(f"data.generator={cfg.generator}: no question kept from {len(chunks)} chunks"
                           + (f" (dropped {generator.report()['dropped']})" if hasattr(generator, "report") else ""))
    ranked = None
    if cfg.distractors == "retrieved":
        ranked = build_retriever(config, chunks).search([item["question"] for item in qac], len(chunks))
    rows = build_rows(chunks, qac, cfg.num_distractors, cfg.oracle_probability, cfg.rows_per_question, cfg.seed,
                      source=cfg.qac or cfg.generator, cot=generator.cot_answer, progress=True, ranked=ranked)
    train, evaluation = split_by_question(rows, cfg.eval_fraction, cfg.seed)

    write_jsonl(stage.dir / "chunks.jsonl", [c.to_dict() for c in chunks])
    # the inputs of the other training approaches, split the same way: QAC by the same held-out questions,
    # paragraphs by the same fraction
    held_out = {r["question_index"] for r in evaluation}
    write_splits(stage.dir, "qac", *[[{"id": f"q{i}", **item} for i, item in enumerate(qac) if (i in held_out) == wanted]
                                     for wanted in (False, True)])
    write_splits(stage.dir, "docs", *split_by_row([{"id": c.id, "text": c.text} for c in chunks], cfg.eval_fraction,
                                                  cfg.seed))
    write_raft(stage.dir, train, evaluation, cfg.formats)
    stage.outputs = {"chunks": len(chunks), "questions": len(qac), "train_rows": len(train),
                     "eval_rows": len(evaluation), "with_oracle": sum(r["oracle_index"] is not None for r in rows),
                     "generator_calls": generator.calls, "formats": cfg.formats, "dataset": str(stage.dir / "raft")}
    if hasattr(generator, "report"):  # a generator that drops rows counts them (local)
        stage.outputs["generated"] = generator.report()
    stage.finish()
    generated = stage.outputs.get("generated")
    dropped = (f" ({generated['kept']} of {generated['rows_written']} generated kept, dropped "
               f"{ {k: v for k, v in generated['dropped'].items() if v} })" if generated else "")
    print(f"data: {len(chunks)} chunks, {len(qac)} questions{dropped}, {len(train)} train / {len(evaluation)} eval RAFT "
          f"rows -> {stage.dir}")
    return stage.dir
