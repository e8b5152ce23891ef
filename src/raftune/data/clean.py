"""`raftune data clean PATH --out OUT`: check every RAFT row, keep a reason for each rejection, write a report.

Each row gets every flag that applies (for the report) and is rejected for the first one in CHECKS order, so the
rejection counts plus the kept rows add up to the rows read, and skipped unreadable rows are counted beside them.
"""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

from raftune import RaftuneError
from raftune.answer import has_final_answer, quoted, quotes
from raftune.data.formats import Row, load_rows, read_records, squash
from raftune.data.language import format_shares, languages
from raftune.manifest import make_dir, write_json, write_jsonl, write_text

# Text a question generator writes instead of a question (the seed's "Your request seems unclear...").
META = re.compile(r"\b(your (request|input)|unclear|incomplete|insufficient|please provide|could you (please )?provide|"
                  r"provided context|context provided|the context (is|does|seems)|as an ai|i'm sorry|i cannot|"
                  r"no context|not sufficient)\b", re.I)
CHECKS = {
    "not_a_question": "meta-text instead of a question, or a question cut off (no question mark)",
    "oracle_too_short": "the oracle document is shorter than min_oracle_chars",
    "no_answer_marker": "the answer has no `<ANSWER>:`",
    "no_quote": "the reasoning quotes nothing (`##begin_quote##...##end_quote##`)",
    "quote_not_in_context": "a quoted span is not in the context, even after normalising whitespace and quotes",
    "quote_not_verbatim": "a quoted span is in the context only after normalising whitespace and quotes (--repair fixes it)",
    "duplicate": "same question and oracle as an earlier row",
    "too_long": "prompt + answer exceed max_tokens",
}


def _span_pattern(quote: str) -> re.Pattern:
    """The quote's words with any whitespace between them and any quote mark for a quote mark."""
    words = squash(quote).split(" ")
    quote_marks = "[\"'“”„‘’‚«»]"
    return re.compile(r"\s+".join(re.sub(r"\\?[\"']", quote_marks, re.escape(w)) for w in words))


def quote_status(quote: str, sources: list[str]) -> tuple[str, str | None]:
    """("verbatim" | "normalised" | "missing", the exact span of a source that a normalised match found)."""
    if any(quote.strip() and quote.strip() in source for source in sources):
        return "verbatim", None
    # the seed's generator wrapped most quotes in quote marks of its own: ##begin_quote## "..." ##end_quote##
    inner = squash(quote).strip("\"'“”„‘’‚«» ")
    if not inner:
        return "missing", None
    pattern = _span_pattern(inner)
    for source in sources:
        found = pattern.search(source)
        if found:
            return "normalised", found.group(0)
    return "missing", None


def is_question(text: str | None) -> bool:
    """A question mark and no meta-text; a cut-off "Was sind die Auswahlkriterien nach § 9 Abs." fails too."""
    return bool(text) and "?" in text and not META.search(text)


def check_row(row: Row, oracle: str, seen: set, min_oracle_chars: int, count_tokens, max_tokens: int | None):
    """The flags of one row, and its reasoning answer with repairable quotes replaced by the exact span."""
    flags = []
    if not is_question(row.question):
        flags.append("not_a_question")
    if len(oracle.strip()) < min_oracle_chars:
        flags.append("oracle_too_short")
    cot = row.cot_answer or ""
    if not has_final_answer(cot):
        flags.append("no_answer_marker")
    spans = quotes(cot, closed_only=True)
    repaired = cot
    if not spans:
        flags.append("no_quote")
    statuses = []
    for quote in spans:
        status, exact = quote_status(quote, [oracle, *row.documents])
        statuses.append(status)
        if exact is not None:
            repaired = repaired.replace(quoted(quote), quoted(exact))
    if "missing" in statuses:
        flags.append("quote_not_in_context")
    elif "normalised" in statuses:
        flags.append("quote_not_verbatim")
    key = (squash(row.question or "").lower(), squash(oracle))
    if key in seen:
        flags.append("duplicate")
    seen.add(key)
    if max_tokens and count_tokens and count_tokens(" ".join([row.question or "", *row.documents, cot])) > max_tokens:
        flags.append("too_long")
    return flags, repaired, statuses


def clean(path: str | Path, out: str | Path, repair: bool = False, skip_bad: bool = False,
          min_oracle_chars: int = 40, tokenizer=None, max_tokens: int | None = None) -> dict:
    path, out = Path(path), Path(out)
    shape, rows, skipped, _ = load_rows(path, skip_bad=skip_bad)
    if not shape.startswith("raft"):
        raise RaftuneError(f"{path}: cleaning needs RAFT rows, found shape '{shape}'")

    records, _ = read_records(path)
    bad = {s["row"] for s in skipped}
    records = [r for n, r in enumerate(records) if n not in bad]
    count_tokens = (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])) if tokenizer else None

    seen, kept, rejected, flag_counts = set(), [], Counter(), Counter()
    quote_counts = Counter()
    examples: dict[str, list] = {}
    for n, (row, record) in enumerate(zip(rows, records)):
        flags, repaired, statuses = check_row(row, record["oracle_context"], seen, min_oracle_chars, count_tokens,
                                              max_tokens)
        quote_counts.update(statuses)
        flag_counts.update(flags)
        if repair and "quote_not_verbatim" in flags:
            flags.remove("quote_not_verbatim")
            row.cot_answer = repaired
        if flags:
            rejected[flags[0]] += 1
            examples.setdefault(flags[0], []).append({"row": n, "question": row.question, "flags": flags})
            continue
        kept.append({"question": row.question, "documents": row.documents, "oracle_index": row.oracle_index,
                     "oracle_context": record["oracle_context"], "cot_answer": row.cot_answer,
                     "final_answer": row.final_answer})

    report = {
        "input": str(path), "shape": shape, "rows_read": len(rows) + len(skipped), "unreadable_skipped": len(skipped),
        "kept": len(kept), "rejected": {name: rejected.get(name, 0) for name in CHECKS},
        "flags": {name: flag_counts.get(name, 0) for name in CHECKS}, "repair": repair,
        "repaired_rows": flag_counts["quote_not_verbatim"] if repair else 0,
        "quotes": {"total": sum(quote_counts.values()), **{k: quote_counts.get(k, 0) for k in
                                                             ("verbatim", "normalised", "missing")}},
        "languages": languages([r["question"] for r in kept], [r["cot_answer"] for r in kept]),
        "skipped": skipped, "examples": {name: rows[:3] for name, rows in examples.items()},
    }
    make_dir(out)
    write_jsonl(out / "clean.jsonl", kept)
    write_json(out / "report.json", report)
    write_text(out / "report.md", format_report(report))
    return report


def format_report(report: dict) -> str:
    lines = [f"# Cleaning report: {report['input']}", "",
             f"{report['rows_read']} rows read ({report['shape']}), {report['kept']} kept, "
             f"{report['unreadable_skipped']} unreadable and skipped.", "",
             "| reason | rejected (first failing check) | rows with this flag | meaning |", "| --- | ---: | ---: | --- |"]
    for name, meaning in CHECKS.items():
        lines.append(f"| {name} | {report['rejected'][name]} | {report['flags'][name]} | {meaning} |")
    q = report["quotes"]
    lines += ["", f"Quoted spans: {q['total']}; verbatim in the context {q['verbatim']}, only after normalising "
                  f"whitespace and quote marks {q['normalised']}, not found {q['missing']}."]
    lines += ["", "Languages of the kept rows (an answer without its quotes): "
                  + "; ".join(f"{field} {format_shares(counts)}" for field, counts in report["languages"].items()) + "."]
    if report["repair"]:
        lines.append(f"`--repair` re-quoted the exact context span in {report['repaired_rows']} rows.")
    for name, rows in report["examples"].items():
        lines += ["", f"## {name}", ""] + [f"- row {e['row']}: {e['question']!r}" for e in rows]
    return "\n".join(lines) + "\n"
