"""Training data from datasets the user already has, written where `raftune train` reads, for every approach it fits.

  data.raft        RAFT rows in any shape `raftune data inspect` reads (the repr-string context, `data clean`'s
                   clean.jsonl), cleaned by the rules of `raftune data clean` (data.clean: repair | strict | off; the
                   report in runs/<run>/data/clean/).
                   Trains raft, and qac (question, oracle document, final answer) and docs (its distinct documents).
  data.paragraphs  [{"paragraph"}] (the seed's chatbot-documents, documents/paragraphs.json) or [{"text"}] (raftune's
                   docs_*.jsonl and chunks.jsonl): trains docs.
  data.qac         [{"question", "answer", "context"}] (the seed's chatbot-qac-pairs), with train.approach qac:
                   trains qac as it is (its contexts need not be corpus paragraphs).

Every key takes every format of raftune.data.formats (JSON, JSONL, Arrow file, Parquet, `save_to_disk` folder).
Rows are split by question (paragraphs by paragraph) with data.eval_fraction, so no held-out question is trained on
with other distractors. Every file is read and checked before anything is written.
"""

from __future__ import annotations

from pathlib import Path

from raftune import RaftuneError
from raftune.chat import user_message
from raftune.data.clean import clean
from raftune.data.formats import load_rows, read_for, read_records, squash
from raftune.data.raft import split_by_question, split_by_row

NEEDS = {"raft": "data.raft (or data.corpus with data.qac, with no data.raft or data.paragraphs)",
         "qac": "data.raft or data.qac", "docs": "data.paragraphs or data.raft"}


def applies(config) -> bool:
    """Whether the data stage trains on given files rather than building RAFT rows from the corpus."""
    cfg = config.data
    return bool(cfg.raft or cfg.paragraphs or (config.train.approach == "qac" and cfg.qac))


def _question_indices(questions: list[str]) -> list[int]:
    """One index per distinct question (whitespace and case ignored): the unit the split holds out."""
    seen: dict[str, int] = {}
    return [seen.setdefault(squash(q).lower(), len(seen)) for q in questions]


def raft_rows(path, mode: str, out: Path) -> tuple[list[dict], dict]:
    """RAFT rows of the file in raftune's layout (the columns `data build` writes), and what cleaning did."""

    shape, _, _ = read_for(path, "data.raft")
    if mode == "off":
        _, rows, _, _ = load_rows(path)
        records, _ = read_records(path)
        kept = [{"question": r.question, "documents": r.documents, "oracle_index": r.oracle_index,
                 "oracle_context": rec["oracle_context"], "cot_answer": r.cot_answer, "final_answer": r.final_answer}
                for r, rec in zip(rows, records)]
        report = {"input": str(path), "shape": shape, "rows_read": len(rows), "kept": len(rows), "clean": "off"}
    else:
        report = clean(path, out, repair=mode == "repair")
        kept, _ = read_records(out / "clean.jsonl")
        report = {k: report[k] for k in ("input", "shape", "rows_read", "kept", "rejected")} | {"clean": mode}
    indices = _question_indices([r["question"] or "" for r in kept])
    rows = []
    for n, (row, q) in enumerate(zip(kept, indices)):
        docs = row["documents"]
        rows.append({"id": f"q{q}-r{n}", "type": "general", "question": row["question"],
                     "context": {"sentences": [docs], "title": [["placeholder_title"] * len(docs)]},
                     "oracle_context": row["oracle_context"], "cot_answer": row["cot_answer"],
                     "instruction": user_message(row["question"], docs), "documents": docs,
                     "oracle_index": row["oracle_index"], "answer": row["final_answer"], "question_index": q})
    return rows, report


def qac_rows(path) -> list[dict]:
    read_for(path, "data.qac")
    _, rows, _, _ = load_rows(path)
    indices = _question_indices([r.question for r in rows])
    return [{"id": f"q{q}-{n}", "question": r.question, "answer": r.final_answer, "context": r.documents[0],
             "question_index": q} for n, (r, q) in enumerate(zip(rows, indices))]


def paragraph_rows(path) -> list[dict]:
    read_for(path, "data.paragraphs")
    _, rows, _, _ = load_rows(path)
    return [{"id": f"p{n}", "text": r.documents[0].strip()} for n, r in enumerate(rows) if r.documents[0].strip()]


def _by_question(rows: list[dict], held: set) -> tuple[list[dict], list[dict]]:
    return [r for r in rows if r["question_index"] not in held], [r for r in rows if r["question_index"] in held]


def splits(config, clean_dir: Path) -> tuple[dict[str, tuple[list[dict], list[dict]]], dict]:
    """{approach: (train rows, eval rows)} for every approach the given files fit, and what was read."""
    cfg = config.data
    fits = {**dict.fromkeys(("raft", "qac", "docs"), "data.raft" if cfg.raft else None),
            **({"qac": "data.qac"} if cfg.qac and not cfg.raft and config.train.approach == "qac" else {}),
            **({"docs": "data.paragraphs"} if cfg.paragraphs else {})}
    approach = config.train.approach
    if not fits.get(approach):  # before any file is read or written
        given = ", ".join(f"{k}={v}" for k, v in (("data.raft", cfg.raft), ("data.paragraphs", cfg.paragraphs)) if v)
        trains = ", ".join(sorted(a for a, key in fits.items() if key))
        raise RaftuneError(f"train.approach={approach} does not fit the given data ({given}: it trains {trains}); "
                           f"{approach} needs {NEEDS[approach]}")
    out, inputs = {}, {}
    if cfg.raft:
        rows, inputs["raft"] = raft_rows(cfg.raft, cfg.clean, clean_dir)
        if not rows:
            raise RaftuneError(f"data.raft: no rows of {cfg.raft} left after data.clean={cfg.clean} "
                               f"(report: {clean_dir / 'report.md'})")
        out["raft"] = split_by_question(rows, cfg.eval_fraction, cfg.seed)
        held = {r["question_index"] for r in out["raft"][1]}
        first = {}
        for r in rows:  # one QAC triplet per question: its oracle document and final answer
            if r["answer"] and r["oracle_context"] and r["question_index"] not in first:
                first[r["question_index"]] = {"id": f"q{r['question_index']}", "question": r["question"],
                                              "answer": r["answer"], "context": r["oracle_context"],
                                              "question_index": r["question_index"]}
        out["qac"] = _by_question(list(first.values()), held)
        documents = dict.fromkeys(d.strip() for r in rows for d in r["documents"] if d.strip())
        out["docs"] = split_by_row([{"id": f"p{n}", "text": d} for n, d in enumerate(documents)], cfg.eval_fraction,
                                   cfg.seed)
    if fits["qac"] == "data.qac":
        rows = qac_rows(cfg.qac)
        inputs["qac"] = {"input": str(cfg.qac), "rows": len(rows)}
        out["qac"] = split_by_question(rows, cfg.eval_fraction, cfg.seed)
    if cfg.paragraphs:
        rows = paragraph_rows(cfg.paragraphs)
        inputs["paragraphs"] = {"input": str(cfg.paragraphs), "rows": len(rows)}
        out["docs"] = split_by_row(rows, cfg.eval_fraction, cfg.seed)
    return out, inputs
