"""Evaluation without models: recorded answers, test sets, retrieval report, tidy results, history, bootstrap CIs,
and the clear errors for bad input."""

import json
import math

import numpy as np
import pandas as pd
import pytest

from raftune import RaftuneError
from raftune.cli import main
from raftune.data.corpus import Chunk
from raftune.evaluate import stage
from raftune.evaluate.recorded import read_recorded
from raftune.evaluate.results import read_history
from raftune.data.retrieval import retrieval_report
from raftune.evaluate.scoring import bootstrap_ci
from raftune.data.testset import Item, load_testset

from conftest import MINI, mini_config

TESTSET = MINI / "testset.json"


def write_answers(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def reference_answers(model="reference"):
    return [{"model": model, "test_id": i.test_id, "question_id": i.question_id, "answer": i.reference}
            for i in load_testset(TESTSET)]


@pytest.fixture(scope="module")
def scored_reference(tmp_path_factory):
    """The mini test set's reference answers, recorded and scored alone."""
    tmp = tmp_path_factory.mktemp("reference")
    answers = write_answers(tmp / "answers.jsonl", reference_answers())
    config = mini_config(tmp / "runs")
    summary = stage.score_file(config, str(TESTSET), str(answers), str(tmp / "out"))
    return tmp / "out", summary


def test_reference_answers_score_keyword_and_rouge_one_for_every_question(scored_reference):
    out, summary = scored_reference
    scores = pd.read_csv(out / "scores.csv")
    assert len(scores) == 8  # 4 tests x 2 phrasings
    for metric in ("keyword_score", "rouge_1", "rouge_2", "rouge_l", "edit_similarity", "jaccard"):
        assert (scores[metric] == 1.0).all(), metric
    assert np.allclose(scores["bleu"], 1.0) and np.allclose(scores["cosine"], 1.0, atol=1e-5)
    assert summary.loc["reference", "weighted"] == pytest.approx(1.0, abs=1e-6)
    # a reference has no <ANSWER>: line, so its final answer is the whole answer: the same perfect scores
    assert (scores["final_rouge_l"] == 1.0).all() and (scores["answer_marker"] == 0.0).all()


def test_results_are_one_tidy_table_with_run_id_time_and_config_hash(scored_reference):
    out, _ = scored_reference
    table = pd.read_parquet(out / "results.parquet")
    assert list(table.columns) == ["run_id", "time", "config_hash", "run", "model", "test_id", "question_id", "part",
                                   "metric", "score", "weight"]
    assert table.run_id.nunique() == 1 and table.config_hash.str.fullmatch(r"[0-9a-f]{12}").all()
    assert set(table.part) == {"full", "final"}
    keyword = table[(table.metric == "keyword_score") & (table.part == "full")]
    assert len(keyword) == 8 and (keyword.score == 1.0).all()
    csv = pd.read_csv(out / "results.csv")
    assert len(csv) == len(table)
    # the seed's quality weight: specificity x relevance (phrasing 2 of each mini test has specificity 0.5)
    assert sorted(keyword.weight.unique()) == [0.5, 1.0]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["outputs"]["run_id"] == table.run_id[0] and manifest["outputs"]["generated"] == 0


def test_runs_accumulate_in_the_history(tmp_path):
    config = mini_config(tmp_path / "runs", f"evaluate.history={tmp_path / 'history'}")
    answers = write_answers(tmp_path / "a.jsonl", reference_answers())
    stage.score_file(config, str(TESTSET), str(answers), str(tmp_path / "one"))
    half = [dict(r, answer=r["answer"][: len(r["answer"]) // 2]) for r in reference_answers()]
    stage.score_file(config, str(TESTSET), str(write_answers(tmp_path / "b.jsonl", half)), str(tmp_path / "two"))
    history = read_history(tmp_path / "history")
    assert history.run_id.nunique() == 2
    means = history[(history.metric == "rouge_l") & (history.part == "full")].groupby("run_id", sort=False).score.mean()
    assert means.iloc[0] == 1.0 and means.iloc[1] < 1.0  # oldest first


def test_retrieval_report_at_each_k():
    chunks = [Chunk(f"d/{n}", doc, page, "", text) for n, (doc, page, text) in
              enumerate([("a", 1, "Die Frist beträgt 14 Tage."), ("b", 2, "Der Beitrag ist 180 Euro."),
                         ("a", 2, "Prüfung zweimal wiederholbar.")])]
    items = [Item(1, 1, "q", 1, 1, "r", ["14 Tage"], "a", [1]),
             Item(2, 1, "q", 1, 1, "r", ["180 Euro", "Prüfung"], "a", [2])]
    ranked = [[chunks[0], chunks[1], chunks[2]], [chunks[1], chunks[0], chunks[2]]]
    report = retrieval_report(items, ranked, ks=(1, 2, 3))
    assert report["k"]["1"] == {"cited_passage": 0.5, "all_keywords": 0.5}
    assert report["k"]["2"] == {"cited_passage": 0.5, "all_keywords": 0.5}
    assert report["k"]["3"] == {"cited_passage": 1.0, "all_keywords": 1.0}


def test_bootstrap_resamples_tests_and_matches_scipy():
    from scipy.stats import bootstrap

    rng = np.random.default_rng(1)
    rows = [{"model": "m", "test_id": t, "question_id": q, "part": "full", "weight": 1.0, "rouge_l": rng.random()}
            for t in range(1, 11) for q in (1, 2, 3)]
    scores = pd.DataFrame(rows)
    for metric in ("keyword_score", "cosine", "edit_similarity", "rouge_1", "rouge_2", "jaccard", "weighted", "bleu",
                   "quote_grounding", "citation", "answer_marker", "same_language"):
        scores[metric] = 0.5
    ci = bootstrap_ci(scores, resamples=500).set_index("metric")
    per_test = scores.groupby("test_id").rouge_l.mean().to_numpy()
    expected = bootstrap((per_test,), np.mean, n_resamples=500, method="percentile",
                         rng=np.random.default_rng(0)).confidence_interval
    assert ci.loc["rouge_l", "ci_low"] == pytest.approx(expected.low)
    assert ci.loc["rouge_l", "ci_high"] == pytest.approx(expected.high)
    assert ci.loc["rouge_l", "ci_low"] < scores.rouge_l.mean() < ci.loc["rouge_l", "ci_high"]
    assert ci.loc["rouge_l", "tests"] == 10 and ci.loc["rouge_l", "questions"] == 30
    assert ci.loc["cosine", "ci_low"] == ci.loc["cosine", "ci_high"] == 0.5  # no spread, no interval


def test_answers_file_with_a_missing_question_is_a_clear_error(tmp_path, capsys):
    rows = reference_answers()
    del rows[5]  # test 3, question 2
    answers = write_answers(tmp_path / "answers.jsonl", rows)
    config = mini_config(tmp_path / "runs")
    with pytest.raises(RaftuneError, match=r"answers.jsonl: model 'reference' has no answer for test 3 question 2 "
                                           r"\(1 of 8 questions missing"):
        stage.score_file(config, str(TESTSET), str(answers), str(tmp_path / "out"))
    assert main(["evaluate", "--testset", str(TESTSET), "--answers", str(answers), "--out", str(tmp_path / "out"),
                 f"runs_dir={tmp_path}"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith(f"raftune: error: {answers}: model 'reference'")  # before any model


@pytest.mark.parametrize("line, message", [
    ('{"model": "m", "test_id": 1, "question_id": 1}', "row 1: missing field 'answer'"),
    ('{"model": "m", "test_id": "1", "question_id": 1, "answer": "x"}', "row 1: field 'test_id' must be int, got str"),
    ('{"model": "m", "test_id": 1, ', "row 1: not valid JSON"),
    ('{"model": "m", "test_id": 1, "question_id": 1, "answer": "y"}', "row 1: model 'm' answers test 1 question 1 twice"),
])
def test_malformed_answers_lines_name_file_line_and_field(tmp_path, line, message):
    path = tmp_path / "answers.jsonl"
    path.write_text('{"model": "m", "test_id": 1, "question_id": 1, "answer": "x"}\n' + line + "\n")
    with pytest.raises(RaftuneError, match=f"^{path}: {message}"):
        read_recorded(path)


def test_testset_answer_without_keywords_is_a_clear_error(tmp_path):
    data = json.loads(TESTSET.read_text())
    del data["tests"][2]["answers"][0]["keywords"]
    bad = tmp_path / "testset.json"
    bad.write_text(json.dumps(data))
    with pytest.raises(RaftuneError, match=rf"^{bad}: tests\[2\]: field 'answers\[0\].keywords' must be a non-empty "
                                           r"list of strings, got None$"):
        load_testset(bad)
    data["tests"][2]["answers"][0]["keywords"] = []
    bad.write_text(json.dumps(data))
    with pytest.raises(RaftuneError, match=r"tests\[2\]: field 'answers\[0\].keywords' must be a non-empty list"):
        load_testset(bad)


def test_raft_held_out_split_with_given_context(tmp_path):
    """The data stage's held-out RAFT rows as the test set: each row's own documents are the context."""
    from raftune.data import stage as data_stage

    config = mini_config(tmp_path / "runs")
    eval_rows = data_stage.run(config) / "hf_eval.jsonl"
    items = load_testset(eval_rows)
    rows = [json.loads(line) for line in eval_rows.read_text().splitlines()]
    assert len(items) == len(rows) == 2 and items[0].keywords == [] and items[0].documents == rows[0]["documents"]
    assert items[0].reference == rows[0]["answer"] and {i.test_id for i in items} == {1}  # two draws, one question
    # a model that answers with the training target: its quotes are grounded in the given documents and cite the
    # oracle when the row has one
    answers = [{"model": "target", "test_id": i.test_id, "question_id": i.question_id, "answer": r["cot_answer"]}
               for i, r in zip(items, rows)]
    config = mini_config(tmp_path / "runs", "evaluate.context=given")
    stage.score_file(config, str(eval_rows), str(write_answers(tmp_path / "a.jsonl", answers)), str(tmp_path / "out"))
    scores = pd.read_csv(tmp_path / "out" / "scores.csv")
    with_oracle = [r["oracle_index"] is not None for r in rows]
    assert scores.quote_grounding.tolist() == [1.0 if o else 0.0 for o in with_oracle]
    assert (scores.citation == 1.0).all() and (scores.final_rouge_l == 1.0).all()
    assert scores.keyword_score.isna().all()  # RAFT rows have no keywords: left out, not zero
    assert not (tmp_path / "out" / "retrieval.json").exists()


def test_given_context_needs_a_raft_test_set(tmp_path):
    config = mini_config(tmp_path / "runs", "evaluate.context=given")
    answers = write_answers(tmp_path / "a.jsonl", reference_answers())
    with pytest.raises(RaftuneError, match="evaluate.context=given needs a RAFT test set"):
        stage.score_file(config, str(TESTSET), str(answers), str(tmp_path / "out"))


def evaluate_mini(tmp_path, *overrides):
    """`raftune evaluate` on the mini test set without the run's models; (config, summary, answers.jsonl rows)."""
    config = mini_config(tmp_path / "runs", "evaluate.run_models=false", "evaluate.recorded=[]", *overrides)
    summary = stage.run(config)
    rows = [json.loads(line) for line in (config.stage_dir("evaluate") / "answers.jsonl").read_text().splitlines()]
    return config, summary, rows


def test_every_evaluation_computes_the_extractive_baseline_from_the_retrieved_passages(tmp_path):
    """On by default, for a test set with no recorded answers beside it: per question, the sentence of the top
    retrieved passage that best matches the question, quoted and repeated as the final answer."""
    from raftune.evaluate.results import results_table

    assert not (MINI / "recorded").exists()
    config, summary, rows = evaluate_mini(tmp_path)
    assert list(summary.index) == ["extractive-baseline"] and len(rows) == 8
    first = next(r for r in rows if (r["test_id"], r["question_id"]) == (1, 1))
    # "Wann endet die Anmeldefrist?": ordnung § 1 ranks first; of its two sentences the second matches
    assert first["context_ids"][0] == "ordnung/0" and len(first["context_ids"]) == config.evaluate.top_k == 3
    sentence = "Die Anmeldefrist endet 14 Tage vor dem Prüfungstermin."
    assert first["answer"] == f"Im Kontext heißt es: ##begin_quote##{sentence}##end_quote##\n<ANSWER>: {sentence}"
    assert all(r["kind"] == "extractive" and r["prompt"] is None and r["tokens_per_s"] is None for r in rows)
    assert summary.loc["extractive-baseline", "quote_grounding"] == 1.0
    manifest = json.loads((config.stage_dir("evaluate") / "manifest.json").read_text())
    assert manifest["outputs"]["generated"] == 0  # no model generated anything
    assert results_table(config.stage_dir("evaluate")).splitlines()[1].endswith("n/a (no model)")


def test_extractive_baseline_false_leaves_the_row_out(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", reference_answers())
    _, summary, rows = evaluate_mini(tmp_path, f"evaluate.recorded=['{answers}']", "evaluate.extractive_baseline=false")
    assert list(summary.index) == ["reference"] and {r["kind"] for r in rows} == {"recorded"}
    config = mini_config(tmp_path / "runs", "evaluate.run_models=false", "evaluate.recorded=[]",
                         "evaluate.extractive_baseline=false")
    with pytest.raises(RaftuneError, match="evaluate: no models"):
        stage.run(config)


def test_a_recorded_extractive_baseline_beside_the_computed_one_is_a_clear_error(tmp_path):
    answers = write_answers(tmp_path / "a.jsonl", reference_answers("extractive-baseline"))
    config = mini_config(tmp_path / "runs", "evaluate.run_models=false", f"evaluate.recorded=['{answers}']")
    with pytest.raises(RaftuneError, match=r"^evaluate: two models named 'extractive-baseline'; .* set "
                                           r"evaluate.extractive_baseline=false\)$"):
        stage.run(config)
    assert not (config.stage_dir("evaluate") / "answers.jsonl").exists()


def test_an_extractive_model_entry_needs_a_name_and_no_other_key():
    from raftune.config import check_spec

    assert check_spec({"kind": "extractive", "name": "floor"}, "m") == {"kind": "extractive", "name": "floor"}
    with pytest.raises(RaftuneError, match=r"^m: needs a 'name'"):
        check_spec({"kind": "extractive"}, "m")
    with pytest.raises(RaftuneError, match=r"^m: unknown key 'path' for kind extractive \(expected kind, name\)$"):
        check_spec({"kind": "extractive", "name": "floor", "path": "x"}, "m")


def test_quote_metrics_are_nan_when_nothing_is_quoted(scored_reference):
    out, _ = scored_reference
    scores = pd.read_csv(out / "scores.csv")
    assert scores.quote_grounding.isna().all() and scores.citation.isna().all()
    ci = pd.read_csv(out / "ci.csv")
    row = ci[(ci.metric == "quote_grounding") & (ci.part == "full")].iloc[0]
    assert row.questions == 0 and math.isnan(row["mean"])


def test_demo_table_shows_intervals_and_says_why_a_value_is_missing(tmp_path):
    from raftune.evaluate.results import TABLE, results_table

    rows = [{"model": m, "part": part, "metric": metric, "mean": mean, "ci_low": mean - 0.1, "ci_high": mean + 0.1}
            for m, quotes in (("base", float("nan")), ("extractive-baseline", 1.0)) for part in ("full", "final")
            for _, metric, _ in TABLE for mean in [quotes if metric == "quote_grounding" else 0.5]]
    pd.DataFrame(rows).to_csv(tmp_path / "ci.csv", index=False)
    pd.DataFrame({"tokens_per_s": [40.0, float("nan")]}, index=["base", "extractive-baseline"]).to_csv(
        tmp_path / "summary.csv")
    lines = results_table(tmp_path).splitlines()
    assert len(lines) == 3 and "nan" not in "\n".join(lines).lower()
    assert "0.500 [0.400, 0.600]" in lines[1] and "n/a (no quotes)" in lines[1] and "40.0" in lines[1]
    assert "n/a (recorded)" in lines[2] and "1.000" in lines[2]


def test_an_answer_that_reasons_in_another_language_than_the_reference_scores_zero_on_same_language(scored_reference):
    """Its quotes do not count: an English reasoning around a German quote is English."""
    from raftune.evaluate.metrics import same_language

    reference = "Die Bearbeitungszeit für die Masterarbeit beträgt sechs Monate."
    quote = "##begin_quote##Die Bearbeitungszeit der Masterarbeit beträgt sechs Monate.##end_quote##"
    german = f"Laut der Ordnung gilt: {quote} Die Frist ist also ein halbes Jahr.\n<ANSWER>: sechs Monate"
    english = f"The document says {quote} So the thesis has to be finished within six months.\n<ANSWER>: six months"
    short = f"{quote}\n<ANSWER>: sechs Monate"  # two words of its own: judged with its quote
    assert [same_language(a, reference) for a in (german, english, quote, short)] == [1.0, 0.0, 1.0, 1.0]
    # a number or a date is in no language (py3langid called these Arabic and Swedish)
    assert all(math.isnan(same_language(a, reference)) for a in ("<ANSWER>: 4,0", "<ANSWER>: 20. Januar", "70%",
                                                                 "<ANSWER>IT - Management (MSI -ITM)</ANSWER>"))
    out, summary = scored_reference
    assert (pd.read_csv(out / "scores.csv")["same_language"] == 1.0).all()  # each reference is in its own language
    assert summary.loc["reference", "same_language"] == 1.0
