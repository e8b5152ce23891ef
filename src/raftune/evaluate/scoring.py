"""Scores per answer (twice: the whole reasoning answer and the final answer after `<ANSWER>:`), means per model
with and without the seed's question-quality weighting, and bootstrap confidence intervals."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from raftune.answer import final_answer, has_final_answer
from raftune.evaluate.metrics import (METRICS, citation, cosine, quote_grounding, same_language, text_scores,
                                      weighted_average)

PARTS = ("full", "final")
KEYS = ["model", "test_id", "question_id", "part"]


def score_rows(rows: list[dict], embedder) -> pd.DataFrame:
    """One row per (model, test, question, part) with every metric.

    rows: {"model", "test_id", "question_id", "answer", "reference", "keywords", "context" (texts), "cited" (texts),
    "weight"}. Quote grounding, citation, the <ANSWER>: line and the language describe the whole answer, so only its
    part has them."""
    records = []
    for part in PARTS:
        texts = [r["answer"] if part == "full" else final_answer(r["answer"]) for r in rows]
        similarities = cosine(embedder, texts, [r["reference"] for r in rows]) if rows else []
        for row, text, similarity in zip(rows, texts, similarities):
            scores = text_scores(text, row["reference"], row["keywords"])
            scores["cosine"] = float(similarity)
            scores["weighted"] = weighted_average(scores)
            whole = part == "full"
            scores["quote_grounding"] = quote_grounding(row["answer"], row["context"]) if whole else math.nan
            scores["citation"] = citation(row["answer"], row["cited"]) if whole else math.nan
            scores["answer_marker"] = float(has_final_answer(row["answer"])) if whole else math.nan
            scores["same_language"] = same_language(row["answer"], row["reference"]) if whole else math.nan
            records.append({"model": row["model"], "test_id": row["test_id"], "question_id": row["question_id"],
                            "part": part, "weight": row["weight"], **{m: scores[m] for m in METRICS}})
    return pd.DataFrame.from_records(records, columns=[*KEYS, "weight", *METRICS])


def _quality_mean(frame: pd.DataFrame, metric: str) -> float:
    valid = frame[metric].notna()
    weights = frame.loc[valid, "weight"]
    return float((frame.loc[valid, metric] * weights).sum() / weights.sum()) if weights.sum() > 0 else math.nan


def summarise(scores: pd.DataFrame, part: str = "full") -> pd.DataFrame:
    """Mean of every metric per model (NaN left out), plus `weighted_q`: the weighted average's mean with each
    question weighted by specificity x relevance, as the seed's report weighted them."""
    frame = scores[scores.part == part]
    order = list(dict.fromkeys(frame.model))
    summary = frame.groupby("model", sort=False)[METRICS].mean()
    summary["weighted_q"] = [_quality_mean(frame[frame.model == m], "weighted") for m in summary.index]
    return summary.loc[order]


def bootstrap_ci(scores: pd.DataFrame, resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> pd.DataFrame:
    """95 % percentile intervals of each model's mean, resampling tests (not questions): the phrasings of one test
    share its reference and passage, so they are not independent, and resampling them alone would understate the
    spread. scipy.stats.bootstrap draws the resamples."""
    from scipy.stats import bootstrap

    rows = []
    for (model, part), frame in scores.groupby(["model", "part"], sort=False):
        for metric in METRICS:
            per_test = frame.groupby("test_id")[metric].mean().dropna().to_numpy()
            low = high = math.nan
            if len(per_test) >= 2:
                if np.ptp(per_test) == 0:  # every test scores the same: the interval is that value
                    low = high = float(per_test[0])
                else:
                    result = bootstrap((per_test,), np.mean, n_resamples=resamples, confidence_level=confidence,
                                       method="percentile", rng=np.random.default_rng(seed))
                    low, high = float(result.confidence_interval.low), float(result.confidence_interval.high)
            rows.append({"model": model, "part": part, "metric": metric,
                         "mean": float(frame[metric].mean()) if frame[metric].notna().any() else math.nan,
                         "mean_quality_weighted": _quality_mean(frame, metric), "ci_low": low, "ci_high": high,
                         "questions": int(frame[metric].notna().sum()), "tests": len(per_test)})
    return pd.DataFrame(rows)
