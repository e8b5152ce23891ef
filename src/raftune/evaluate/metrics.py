"""Answer metrics: KeywordScore, cosine similarity of embeddings, ROUGE-L (rouge-score)."""

from __future__ import annotations

import re

import numpy as np
from rouge_score import rouge_scorer

WEIGHTS = {"keyword_score": 1.5, "cosine": 1.5, "rouge_l": 0.5}  # the seed's weights for these metrics


class _WordTokenizer:
    """rouge-score's default tokenizer drops every non-ASCII letter, which splits German words at each umlaut."""

    def tokenize(self, text):
        return re.findall(r"\w+", text.lower())


_ROUGE = rouge_scorer.RougeScorer(["rougeL"], tokenizer=_WordTokenizer())


def keyword_score(answer: str, keywords: list[str]) -> float:
    """Share of the reference keywords that occur in the answer (case-insensitive substring)."""
    text = answer.lower()
    return sum(k.lower() in text for k in keywords) / len(keywords)


def rouge_l(answer: str, reference: str) -> float:
    return _ROUGE.score(reference, answer)["rougeL"].fmeasure


def cosine(embedder, answers: list[str], references: list[str]) -> np.ndarray:
    a = embedder.encode(answers, normalize_embeddings=True, show_progress_bar=False)
    b = embedder.encode(references, normalize_embeddings=True, show_progress_bar=False)
    return (a * b).sum(axis=1)


def weighted_average(row: dict) -> float:
    return sum(WEIGHTS[m] * row[m] for m in WEIGHTS) / sum(WEIGHTS.values())
