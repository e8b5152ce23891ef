"""The whole pipeline on the mini corpus: every stage writes its artifacts and manifest."""

import json

import pandas as pd


def test_every_stage_has_a_manifest(mini_run):
    config, _ = mini_run
    for stage in ("data", "train", "merge", "export", "evaluate", "plots"):
        manifest = json.loads((config.stage_dir(stage) / "manifest.json").read_text())
        assert manifest["stage"] == stage and manifest["versions"]["transformers"]
        assert manifest["seconds"] >= 0
    export = json.loads((config.stage_dir("export") / "manifest.json").read_text())
    assert export["inputs"]["converter"]["llama_cpp_commit"]  # converter and runtime: the same llama.cpp


def test_results_table_has_one_row_per_model(mini_run):
    config, summary = mini_run
    assert list(summary.index) == ["base", "finetuned-hf", "finetuned-gguf-f16", "finetuned-gguf-q8_0",
                                   "extractive-baseline"]
    scores = pd.read_csv(config.stage_dir("evaluate") / "scores.csv")
    assert len(scores) == 5 * 8  # 5 models x 4 tests x 2 phrasings
    assert scores["keyword_score"].between(0, 1).all() and scores["rouge_l"].between(0, 1).all()
    assert (config.stage_dir("plots") / "heatmap.png").stat().st_size > 10_000
    assert (config.stage_dir("train") / "loss.png").is_file()


def test_data_formats_and_token_lengths(mini_run):
    config, _ = mini_run
    data = config.stage_dir("data")
    counts = {name: len((data / f"{name}_train.jsonl").read_text().splitlines()) for name in ("hf", "completion", "chat")}
    # 6 QAC x 2 rows per question, one of 6 questions (eval_fraction 0.2 -> round(1.2) = 1) held out
    assert counts == {"hf": 10, "completion": 10, "chat": 10}
    chat = json.loads((data / "chat_train.jsonl").read_text().splitlines()[0])
    assert [m["role"] for m in chat["messages"]] == ["user", "assistant"]
    report = json.loads((config.stage_dir("train") / "token_report.json").read_text())["train"]
    assert len(report["prompt_lengths"]) == len(report["completion_lengths"]) == 10
    assert (config.stage_dir("train") / "lengths.png").is_file()


def test_f16_gguf_answers_like_the_hf_model(mini_run):
    """Greedy decoding through llama.cpp f16 reproduces the HF model's answers on the mini test set."""
    config, _ = mini_run
    rows = [json.loads(line) for line in (config.stage_dir("evaluate") / "answers.jsonl").read_text().splitlines()]
    hf = {(r["test_id"], r["question_id"]): r["answer"] for r in rows if r["model"] == "finetuned-hf"}
    f16 = {(r["test_id"], r["question_id"]): r["answer"] for r in rows if r["model"] == "finetuned-gguf-f16"}
    same = sum(hf[k] == f16[k] for k in hf)
    assert same >= 0.75 * len(hf), (same, len(hf))
