"""Answer metrics: the seed's seven, BLEU, and two checks the seed lacked (quote grounding, citation correctness).

Each score is in [0, 1], higher is better, and comes from the field's library where one exists:
  keyword_score    share of the reference keywords found in the answer (case-insensitive substring; the seed's)
  edit_similarity  1 - normalised Levenshtein distance (rapidfuzz), the seed's "EditDistance" turned into a score
  rouge_1/2/l      F-measure (rouge-score), on lower-cased word tokens
  cosine           cosine similarity of sentence-transformers embeddings (the run's retrieval embedder)
  jaccard          |A ∩ B| / |A ∪ B| of the two texts' word sets (a one-line formula; no library needed)
  bleu             sentence BLEU (sacrebleu, its default 13a tokenizer and exp smoothing) / 100
  quote_grounding  share of ##begin_quote##...##end_quote## spans found in the context given to the model
  citation         share of those spans found in the passage the test cites (document and page)
  answer_marker    1 if the answer has the `<ANSWER>:` line the RAFT format ends with
  same_language    1 if the answer's own words (quotes left out) are in the reference answer's language (py3langid):
                   a German assistant that reasons in English scores 0 however well it quotes; NaN for a number
NaN means "does not apply" (no keywords in a RAFT test set, no quote in the answer) and is left out of means.
"""

from __future__ import annotations

import math
import re

import numpy as np
import sacrebleu
from rapidfuzz.distance import Levenshtein
from rouge_score import rouge_scorer

from raftune.answer import quotes, without_markers, without_quotes
from raftune.data.clean import quote_status
from raftune.data.language import NONE, language

# The seed's weights (its promptfoo config); their weighted average is its headline number. Order = heatmap order.
WEIGHTS = {"edit_similarity": 1.0, "keyword_score": 1.5, "rouge_1": 0.5, "rouge_2": 0.5, "rouge_l": 0.5,
           "cosine": 1.5, "jaccard": 0.5}
UNWEIGHTED = ["bleu", "quote_grounding", "citation", "answer_marker", "same_language"]
METRICS = [*WEIGHTS, "weighted", *UNWEIGHTED]
LABELS = {"edit_similarity": "EditDistance", "keyword_score": "KeywordScore", "rouge_1": "ROUGE-1",
          "rouge_2": "ROUGE-2", "rouge_l": "ROUGE-L", "cosine": "cosine", "jaccard": "Jaccard",
          "weighted": "weighted avg", "bleu": "BLEU", "quote_grounding": "quote grounding",
          "citation": "citation", "answer_marker": "<ANSWER>: line",
          "same_language": "reference's language"}



def words(text: str) -> list[str]:
    """Lower-cased word tokens. rouge-score's default tokenizer keeps only [a-z0-9], which splits every German word
    at its umlaut ("Prüfung" -> "pr", "fung"); \\w keeps Unicode letters whole."""
    return re.findall(r"\w+", text.lower())


class _WordTokenizer:
    def tokenize(self, text):
        return words(text)


_ROUGE = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=_WordTokenizer())


def keyword_score(answer: str, keywords: list[str]) -> float:
    if not keywords:
        return math.nan
    text = answer.lower()
    return sum(k.lower() in text for k in keywords) / len(keywords)


def edit_similarity(answer: str, reference: str) -> float:
    return Levenshtein.normalized_similarity(answer, reference)


def rouge(answer: str, reference: str) -> dict[str, float]:
    scores = _ROUGE.score(reference, answer)  # rouge-score's order: (target, prediction)
    return {"rouge_1": scores["rouge1"].fmeasure, "rouge_2": scores["rouge2"].fmeasure,
            "rouge_l": scores["rougeL"].fmeasure}


def jaccard(answer: str, reference: str) -> float:
    a, b = set(words(answer)), set(words(reference))
    return len(a & b) / len(a | b) if a | b else 1.0


def bleu(answer: str, reference: str) -> float:
    return sacrebleu.sentence_bleu(answer, [reference]).score / 100


def cosine(embedder, answers: list[str], references: list[str]) -> np.ndarray:
    a = embedder.encode(answers, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True)
    b = embedder.encode(references, normalize_embeddings=True, show_progress_bar=False, convert_to_numpy=True)
    return (a * b).sum(axis=1)


def _found_share(spans: list[str], sources: list[str]) -> float:
    """Verbatim, or equal after normalising whitespace and quote marks (the data cleaner's rule)."""
    if not spans:
        return math.nan
    return sum(quote_status(s, sources)[0] != "missing" for s in spans) / len(spans)


def quote_grounding(answer: str, context: list[str]) -> float:
    """A hallucination check: a quote that is not in the context was made up (or remembered)."""
    return _found_share(quotes(answer), context)


def citation(answer: str, cited: list[str]) -> float:
    """Did the model quote the passage the test cites, not merely some passage of the context?"""
    return _found_share(quotes(answer), cited) if cited else math.nan


def same_language(answer: str, reference: str) -> float:
    """Judged by the answer's own words; where they are too few to tell (a quote and a short answer), with its quotes;
    NaN where even those are too few (an answer that is a number or a date is in no language)."""
    own = language(without_quotes(answer))
    own = own if own != NONE else language(without_markers(answer))
    return math.nan if own == NONE else float(own == language(reference))


def text_scores(answer: str, reference: str, keywords: list[str]) -> dict[str, float]:
    """Every text metric but cosine (which is batched over all answers at once)."""
    return {"keyword_score": keyword_score(answer, keywords), "edit_similarity": edit_similarity(answer, reference),
            **rouge(answer, reference), "jaccard": jaccard(answer, reference), "bleu": bleu(answer, reference)}


def weighted_average(scores: dict) -> float:
    """The seed's weighted average, over the metrics that apply (no keywords: the other six, re-normalised)."""
    present = {m: w for m, w in WEIGHTS.items() if not math.isnan(scores.get(m, math.nan))}
    return sum(w * scores[m] for m, w in present.items()) / sum(present.values()) if present else math.nan
