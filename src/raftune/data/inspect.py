"""`raftune data inspect PATH`: what a data file holds, in numbers."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from raftune.data.formats import load_rows
from raftune.data.language import format_shares, languages
from raftune.figures import length_histogram

TEXT_SHAPES = ("completion", "chat")  # training text: the documents are inside the prompt, not counted apart


def token_lengths(rows, tokenizer) -> dict[str, list[int]]:
    """Prompt tokens (question + documents) and completion tokens (reasoning answer, else final answer)."""
    prompts = [" ".join([row.question or "", *row.documents]) for row in rows]
    completions = [row.cot_answer or row.final_answer or "" for row in rows]
    encode = lambda texts: [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    return {"prompt": encode(prompts), "completion": encode(completions)}


def percentiles(values: list[int]) -> dict[str, int]:
    if not values:
        return {}
    return {f"p{q}": int(np.percentile(values, q)) for q in (50, 90, 99)} | {"max": int(max(values))}


def inspect(path: str | Path, tokenizer=None, plot: str | Path | None = None) -> dict:
    shape, rows, _, columns = load_rows(path)
    report = {"path": str(path), "rows": len(rows), "shape": shape, "columns": columns}
    if shape not in TEXT_SHAPES:
        report["documents_per_row"] = dict(sorted(Counter(len(row.documents) for row in rows).items()))
        report["oracle_present"] = round(sum(row.oracle_index is not None for row in rows) / max(len(rows), 1), 4)
    report["languages"] = languages([row.question for row in rows], [row.cot_answer or row.final_answer for row in rows])
    if shape.startswith("raft") or shape in TEXT_SHAPES:
        report["answer_marker"] = round(sum(row.final_answer is not None for row in rows) / max(len(rows), 1), 4)
    if tokenizer is not None:
        lengths = token_lengths(rows, tokenizer)
        report["tokens"] = {name: percentiles(values) for name, values in lengths.items()}
        if plot:

            report["plot"] = str(length_histogram(lengths, Path(plot)))
    return report


def format_report(report: dict) -> str:
    lines = [f"{report['path']}: {report['rows']} rows, shape '{report['shape']}'",
             f"columns: {', '.join(report['columns'])}"]
    if "documents_per_row" in report:
        lines += [f"documents per row: {report['documents_per_row']}", f"oracle present: {report['oracle_present']:.1%}"]
    if "answer_marker" in report:
        lines.append(f"with <ANSWER>: {report['answer_marker']:.1%}")
    lines += [f"{field} language: {format_shares(counts)}" for field, counts in report["languages"].items()]
    for name, stats in report.get("tokens", {}).items():
        lines.append(f"{name} tokens: " + ", ".join(f"{k} {v}" for k, v in stats.items()))
    return "\n".join(lines)
