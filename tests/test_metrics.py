"""Each metric on a fixed pair of texts equals its library's own output; the RAFT-specific checks on hand-made cases."""

import math

import numpy as np
import pytest
import sacrebleu
from rapidfuzz.distance import Levenshtein
from rouge_score import rouge_scorer

from raftune.answer import final_answer, quotes
from raftune.evaluate import metrics
from raftune.data.embedders import load_embedder

ANSWER = "Die Anmeldung endet 21 Tage vor dem Termin der Prüfung."
REFERENCE = "Die Anmeldung im Prüfungsportal SeeCampus endet 21 Tage vor dem Prüfungstermin."
ASCII_ANSWER = "The registration closes 21 days before the exam date."
ASCII_REFERENCE = "Registration in the portal closes 21 days before the date of the exam."


def test_keyword_score_is_the_share_of_keywords_found_case_insensitively():
    assert metrics.keyword_score(ANSWER, ["21 Tage", "SeeCampus", "prüfung"]) == pytest.approx(2 / 3)
    assert math.isnan(metrics.keyword_score(ANSWER, []))


def test_edit_similarity_is_rapidfuzz_normalised_levenshtein():
    expected = 1 - Levenshtein.distance(ANSWER, REFERENCE) / max(len(ANSWER), len(REFERENCE))
    assert metrics.edit_similarity(ANSWER, REFERENCE) == pytest.approx(expected)
    assert metrics.edit_similarity(ANSWER, REFERENCE) == Levenshtein.normalized_similarity(ANSWER, REFERENCE)


def test_rouge_equals_rouge_score_on_ascii_text_and_keeps_umlaut_words_whole():
    library = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"]).score(ASCII_REFERENCE, ASCII_ANSWER)
    ours = metrics.rouge(ASCII_ANSWER, ASCII_REFERENCE)
    assert ours == pytest.approx({"rouge_1": library["rouge1"].fmeasure, "rouge_2": library["rouge2"].fmeasure,
                                  "rouge_l": library["rougeL"].fmeasure})
    # the library's default tokenizer splits "Prüfung" into "pr" + "fung": an answer "Prüfung" would match "Prädikat
    # fung"; ours matches the whole word only
    assert metrics.rouge("Prüfung", "Prüfung")["rouge_1"] == 1.0
    assert metrics.rouge("Prüfung", "Prädikat fung")["rouge_1"] == 0.0
    assert rouge_scorer.RougeScorer(["rouge1"]).score("Prädikat fung", "Prüfung")["rouge1"].fmeasure > 0


def test_bleu_is_sacrebleu_sentence_bleu_over_100():
    assert metrics.bleu(ANSWER, REFERENCE) == pytest.approx(sacrebleu.sentence_bleu(ANSWER, [REFERENCE]).score / 100)
    assert metrics.bleu(REFERENCE, REFERENCE) == pytest.approx(1.0)


def test_jaccard_of_word_sets():
    # {die, anmeldung, endet, 21, tage, vor, dem, termin, der, prüfung} vs
    # {die, anmeldung, im, prüfungsportal, seecampus, endet, 21, tage, vor, dem, prüfungstermin}: 7 shared of 14
    assert metrics.jaccard(ANSWER, REFERENCE) == pytest.approx(7 / 14)
    assert metrics.jaccard("a b", "B A a") == 1.0


def test_cosine_equals_sentence_transformers_cos_sim():
    from sentence_transformers.util import cos_sim

    embedder = load_embedder("all-MiniLM-L6-v2")
    expected = cos_sim(embedder.encode(ANSWER), embedder.encode(REFERENCE)).item()
    assert metrics.cosine(embedder, [ANSWER], [REFERENCE])[0] == pytest.approx(expected, abs=1e-5)
    assert metrics.cosine(embedder, [REFERENCE], [REFERENCE])[0] == pytest.approx(1.0, abs=1e-5)


def test_weighted_average_uses_the_seeds_weights():
    scores = {"edit_similarity": 0.2, "keyword_score": 1.0, "rouge_1": 0.4, "rouge_2": 0.2, "rouge_l": 0.3,
              "cosine": 0.8, "jaccard": 0.5}
    expected = (1.0 * 0.2 + 1.5 * 1.0 + 0.5 * 0.4 + 0.5 * 0.2 + 0.5 * 0.3 + 1.5 * 0.8 + 0.5 * 0.5) / 6.0
    assert metrics.weighted_average(scores) == pytest.approx(expected)
    # no keywords (a RAFT test set): the other six, re-normalised
    no_keywords = {**scores, "keyword_score": math.nan}
    assert metrics.weighted_average(no_keywords) == pytest.approx((expected * 6.0 - 1.5) / 4.5)


def test_quote_grounding_and_citation():
    cited = "(2) Die Anmeldung endet 21 Tage vor dem Prüfungstermin."
    other = "(1) Der Semesterbeitrag beträgt 180 Euro."
    answer = ("Im Kontext heißt es: ##begin_quote##Die Anmeldung endet 21 Tage vor dem Prüfungstermin.##end_quote## "
              "und ##begin_quote##Der  Semesterbeitrag beträgt 180 Euro.##end_quote## und "
              "##begin_quote##Die Frist ist verlängerbar.##end_quote##\n<ANSWER>: 21 Tage")
    assert quotes(answer)[2] == "Die Frist ist verlängerbar."
    # two of three quotes are in the context (one only up to whitespace), one is made up
    assert metrics.quote_grounding(answer, [cited, other]) == pytest.approx(2 / 3)
    # only one of three quotes comes from the passage the test cites
    assert metrics.citation(answer, [cited]) == pytest.approx(1 / 3)
    assert math.isnan(metrics.quote_grounding("Keine Zitate.", [cited]))
    # a quote cut off by max_new_tokens is still a quote, and a prefix of the context is grounded
    assert metrics.quote_grounding("##begin_quote##Die Anmeldung endet 21", [cited]) == 1.0


def test_final_answer_is_the_text_after_the_marker():
    assert final_answer("Begründung ...\n<ANSWER>: 21 Tage") == "21 Tage"
    assert final_answer("ohne Marker") == "ohne Marker"


def test_scores_of_the_reference_itself_are_perfect():
    scores = metrics.text_scores(REFERENCE, REFERENCE, ["SeeCampus", "21 Tage"])
    assert scores == pytest.approx({"keyword_score": 1.0, "edit_similarity": 1.0, "rouge_1": 1.0, "rouge_2": 1.0,
                                    "rouge_l": 1.0, "jaccard": 1.0, "bleu": 1.0})
    assert np.isfinite(list(scores.values())).all()
