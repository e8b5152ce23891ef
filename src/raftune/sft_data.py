"""Examples -> token ids and completion masks, tokenised here rather than by trl, for every training approach.

Chat examples (RAFT rows, QAC triplets) go through `chat.render_example`, the renderer inference uses, and are
tokenised once with `add_special_tokens=False` (the template already wrote BOS; trl's plain-text path would add a
second one). The completion ends with the template's EOS, so EOS is always in the labels. Plain documents get
BOS + text + EOS. Examples longer than `max_length` are dropped and counted rather than truncated: a truncated
completion would teach the model never to stop.
"""

from __future__ import annotations

from datasets import Dataset
from raftune import RaftuneError
from raftune.chat import encode, render_example

# the columns each approach reads, checked before any model is loaded
REQUIRED_COLUMNS = {"raft": ("id", "question", "documents", "cot_answer"),
                    "qac": ("id", "question", "context", "answer"),
                    "docs": ("id", "text")}


def check_columns(rows: list[dict] | Dataset, approach: str, source: str) -> None:
    columns = set(rows.column_names if isinstance(rows, Dataset) else (rows[0] if rows else {}))
    for column in REQUIRED_COLUMNS[approach]:
        if column not in columns:
            raise RaftuneError(f"{source}: missing column '{column}' that train.approach={approach} needs "
                               f"(columns: {', '.join(sorted(columns)) or 'none'})")


def example_ids(row: dict, approach: str, tokenizer) -> tuple[list[int], int]:
    """(token ids, number of prompt tokens) of one example."""
    if approach == "docs":
        return [tokenizer.bos_token_id, *encode(tokenizer, row["text"]), tokenizer.eos_token_id], 0
    documents, answer = (row["documents"], row["cot_answer"]) if approach == "raft" else ([row["context"]], row["answer"])
    prompt, completion = render_example(tokenizer, row["question"], documents, answer)
    prompt_ids = encode(tokenizer, prompt)
    ids = encode(tokenizer, prompt + completion)
    if ids[:len(prompt_ids)] != prompt_ids:
        raise ValueError(f"row {row['id']}: prompt tokens change when the completion follows; masking would be wrong")
    return ids, len(prompt_ids)


def tokenize_rows(rows, tokenizer, max_length: int, approach: str = "raft") -> tuple[Dataset, dict]:
    features = {"input_ids": [], "completion_mask": []}
    dropped, prompt_lengths, completion_lengths = [], [], []
    for row in rows:
        ids, n_prompt = example_ids(row, approach, tokenizer)
        prompt_lengths.append(n_prompt)
        completion_lengths.append(len(ids) - n_prompt)
        if len(ids) > max_length:
            dropped.append(row["id"])
            continue
        features["input_ids"].append(ids)
        features["completion_mask"].append([0] * n_prompt + [1] * (len(ids) - n_prompt))
    lengths = [len(ids) for ids in features["input_ids"]]
    report = {"rows": len(rows), "kept": len(lengths), "dropped_too_long": len(dropped), "dropped_ids": dropped,
              "max_length": max_length, "max_tokens": max(lengths, default=0),
              "mean_tokens": round(sum(lengths) / max(1, len(lengths)), 1),
              # every row, dropped ones included: the histogram shows what the budget cut off
              "prompt_lengths": prompt_lengths, "completion_lengths": completion_lengths}
    return Dataset.from_dict(features), report


class MaskedCollator:
    """For `transformers.Trainer`: pad, and build labels by hand: input ids where the completion mask is 1,
    -100 on the prompt and on padding. Padding is masked by position (the attention mask), never by token id, so
    EOS stays a label even when the pad token is EOS."""

    def __init__(self, pad_token_id: int):
        self.pad_token_id = pad_token_id

    def __call__(self, examples: list[dict]) -> dict:
        import torch

        width = max(len(e["input_ids"]) for e in examples)
        batch = {"input_ids": [], "attention_mask": [], "labels": []}
        for e in examples:
            ids, mask = list(e["input_ids"]), list(e["completion_mask"])
            pad = width - len(ids)
            batch["input_ids"].append(ids + [self.pad_token_id] * pad)
            batch["attention_mask"].append([1] * len(ids) + [0] * pad)
            batch["labels"].append([t if m else -100 for t, m in zip(ids, mask)] + [-100] * pad)
        return {key: torch.tensor(value) for key, value in batch.items()}
