"""RAFT rows: question + oracle document + distractor documents + a chain-of-thought answer quoting its source.

The answer generator is offline and extractive: it quotes the oracle sentence that best matches the question and
its reference answer (rapidfuzz), so every quote appears verbatim in the context and every row ends with
`<ANSWER>:`, the two faults the seed's generated data had most often.
"""

from __future__ import annotations

import random
import re

from rapidfuzz import fuzz

from raftune import RaftuneError
from raftune.answer import final_answer, format_answer
from raftune.chat import user_message
from raftune.data.corpus import Chunk

# A sentence ends at . ; ! ? before a capital, digit or "(". Not after a one- or two-digit number: German writes
# dates ("bis zum 20. Juli"), ordinals ("das 1. Fachsemester") and list items ("1. Zeugnisse") that way, and a quote
# cut there ("bis zum 20.") loses what it was quoted for.
_SENTENCE_END = re.compile(r"(?<=[.;!?])(?<!\b\d\.)(?<!\b\d\d\.)\s+(?=[(A-ZÄÖÜ0-9])")


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE_END.split(text) if s.strip()]


def best_sentence(query: str, text: str) -> str:
    """The sentence of `text` that best matches `query` (rapidfuzz token_set_ratio, the first of equals): what the
    extractive answers of RAFT rows and the evaluation's extractive baseline quote."""
    return max(split_sentences(text) or [""], key=lambda s: fuzz.token_set_ratio(query, s))


def extractive_answer(question: str, answer: str, oracle: str) -> str:
    """Chain of thought: the best-matching oracle sentence, quoted verbatim, then the final answer."""
    return format_answer(best_sentence(f"{question} {answer}", oracle), answer)


def build_rows(chunks: list[Chunk], qac: list[dict], num_distractors: int, oracle_probability: float,
               rows_per_question: int, seed: int, source: str = "qac", cot=None, progress: bool = False,
               ranked: list[list[Chunk]] | None = None) -> list[dict]:
    """One or more RAFT rows per QAC triplet, in the gorilla/raft column layout plus normalised fields.

    `cot(question, answer, oracle_text)` writes the reasoning answer (default: the offline extractive one) where the
    triplet brings none (`cot_answer`).
    `ranked` (every chunk per question, best first: a retriever's ranking) lays rows out as a retrieved test prompt
    is: distractors drawn from the question's (num_distractors + 1) x rows_per_question best-ranked other chunks, the
    documents in ranked order instead of shuffled."""
    from tqdm import tqdm

    cot = cot or extractive_answer
    if num_distractors + 2 > len(chunks):
        raise RaftuneError(f"num_distractors={num_distractors} needs at least {num_distractors + 2} chunks in the "
                           f"corpus, found {len(chunks)}")
    by_text = {chunk.text: chunk for chunk in chunks}
    rng = random.Random(seed)
    rows = []
    for q, item in enumerate(tqdm(qac, desc="RAFT rows", unit="question", disable=not progress)):
        oracle = by_text.get(item["context"].strip())
        if oracle is None:
            raise RaftuneError(f"{source}: row {q}: field 'context' is not the text of any corpus paragraph")
        # a generator that writes questions with their reasoning answers (local) hands them over with the question
        answer = item.get("cot_answer") or cot(item["question"], item["answer"], oracle.text)
        others = [c for c in (chunks if ranked is None else ranked[q]) if c.id != oracle.id]
        if ranked is not None:
            others = others[:(num_distractors + 1) * rows_per_question]
        for r in range(rows_per_question):
            # gorilla/raft's layout: 1 + num_distractors documents per row; without the oracle, one more distractor
            distractors = rng.sample(others, num_distractors + 1)
            with_oracle = rng.random() < oracle_probability
            docs = distractors[:-1] + [oracle] if with_oracle else distractors
            rng.shuffle(docs)
            if ranked is not None:
                docs.sort(key=ranked[q].index)
            texts = [d.text for d in docs]
            rows.append({
                "id": f"q{q}-r{r}",
                "type": "general",
                "question": item["question"],
                "context": {"sentences": [texts], "title": [[d.id for d in docs]]},
                "oracle_context": oracle.text,
                "cot_answer": answer,
                "instruction": user_message(item["question"], texts),
                # normalised fields
                "documents": texts,
                "oracle_index": docs.index(oracle) if with_oracle else None,
                "answer": item["answer"] if item["answer"] is not None else final_answer(answer),
                "question_index": q,
                "document": oracle.document,
                "page": oracle.page,
            })
    return rows


def split_by_question(rows: list[dict], eval_fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Train/eval split by question, so no eval question is seen in training with other distractors."""
    questions = sorted({row["question_index"] for row in rows})
    rng = random.Random(seed)
    held_out = set(rng.sample(questions, round(len(questions) * eval_fraction)))
    return ([r for r in rows if r["question_index"] not in held_out],
            [r for r in rows if r["question_index"] in held_out])


def split_by_row(rows: list[dict], fraction: float, seed: int) -> tuple[list[dict], list[dict]]:
    """Paragraphs have no question: `fraction` of the rows, drawn with `seed`, are held out."""
    held = set(random.Random(seed).sample(range(len(rows)), round(len(rows) * fraction)))
    return [r for n, r in enumerate(rows) if n not in held], [r for n, r in enumerate(rows) if n in held]
