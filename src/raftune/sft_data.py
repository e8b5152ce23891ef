"""RAFT rows -> token ids and completion masks, tokenised here rather than by trl.

Every example goes through `chat.render_example`, the renderer inference uses, and is tokenised once with
`add_special_tokens=False` (the template already wrote BOS; trl's plain-text path would add a second one).
The completion ends with the template's EOS, so EOS is always in the labels. Rows longer than `max_length` are
dropped and counted rather than truncated: a truncated completion would teach the model never to stop.
"""

from __future__ import annotations

from datasets import Dataset

from raftune.chat import encode, render_example


def tokenize_rows(rows, tokenizer, max_length: int) -> tuple[Dataset, dict]:
    features = {"input_ids": [], "completion_mask": []}
    dropped, prompt_lengths, completion_lengths = [], [], []
    for row in rows:
        prompt, completion = render_example(tokenizer, row["question"], row["documents"], row["cot_answer"])
        prompt_ids = encode(tokenizer, prompt)
        ids = encode(tokenizer, prompt + completion)
        if ids[:len(prompt_ids)] != prompt_ids:
            raise ValueError(f"row {row['id']}: prompt tokens change when the completion follows; masking would be wrong")
        prompt_lengths.append(len(prompt_ids))
        completion_lengths.append(len(ids) - len(prompt_ids))
        if len(ids) > max_length:
            dropped.append(row["id"])
            continue
        features["input_ids"].append(ids)
        features["completion_mask"].append([0] * len(prompt_ids) + [1] * (len(ids) - len(prompt_ids)))
    lengths = [len(ids) for ids in features["input_ids"]]
    report = {"rows": len(rows), "kept": len(lengths), "dropped_too_long": len(dropped), "dropped_ids": dropped,
              "max_length": max_length, "max_tokens": max(lengths, default=0),
              "mean_tokens": round(sum(lengths) / max(1, len(lengths)), 1),
              # every row, dropped ones included: the histogram shows what the budget cut off
              "prompt_lengths": prompt_lengths, "completion_lengths": completion_lengths}
    return Dataset.from_dict(features), report
