"""The results the README quotes are the results of the committed run they come from: its demo table is, character
for character, the table that notebook 00 printed in its committed full run, and its picture of the assistant is
`make demo`'s model answering a question of the demo's test set (assets/screenshot.py's record beside it)."""

import json
import math
import sys
from pathlib import Path

import nbformat
import pandas as pd

from raftune.answer import final_answer
from raftune.cli import DEFAULT_CONFIG
from raftune.config import load_config
from raftune.data.testset import load_testset
from raftune.manifest import sha256_file

ROOT = Path(__file__).resolve().parents[1]


def notebook_text(path: Path) -> str:
    notebook = nbformat.read(path, as_version=4)
    return "".join(output.get("text", "") + output.get("data", {}).get("text/plain", "")
                   for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs)


def test_the_readme_demo_table_is_the_one_notebook_00_printed():
    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## What `make demo` shows", 1)[1]
    table = section.split("```\n", 2)[1].strip()  # the first fenced block of the section
    assert len(table.splitlines()) >= 4, "the README's demo section has no results table"
    assert table in notebook_text(ROOT / "notebooks" / "00_demo.ipynb")


def test_the_readme_screenshot_is_make_demos_model_answering_a_test_question():
    assert "](assets/serve.png)" in (ROOT / "README.md").read_text(encoding="utf-8")
    record = json.loads((ROOT / "assets" / "serve.json").read_text(encoding="utf-8"))
    assert record["png_sha256"] == sha256_file(ROOT / "assets" / "serve.png"), "serve.png is not the page serve.json records"
    config = load_config(ROOT / DEFAULT_CONFIG)
    assert (record["recipe"], record["run"], record["base"]) == (DEFAULT_CONFIG, config.run, config.base)
    assert record["gguf"] in [f"model-{gguf_type}.gguf" for gguf_type in config.export.types]
    assert record["model"] == f"{config.run}-{record['gguf'].removesuffix('.gguf')}"  # the name the page showed
    assert record["question"] in [test.question for test in load_testset(ROOT / config.evaluate.testset)]
    assert record["final_answer"] and record["final_answer"] == final_answer(record["answer"])
    assert record["sources"] and record["first_source_text"]


def test_the_quality_ladder_adds_an_evaluations_models_with_their_ratio_to_the_extractive_baseline(mini_run, tmp_path,
                                                                                                   capsys):
    sys.path.insert(0, str(ROOT / "bench"))
    import quality_ladder

    config, _ = mini_run
    evaluate, ladder = config.stage_dir("evaluate"), tmp_path / "ladder.csv"
    args = ["--ladder", str(ladder), "--add", str(evaluate), "--testset", "mini", "--base", "tiny", "--rows", "mini QAC",
            "--commit", "abc1234", "--command", "pytest", "--train-s", "12"]
    quality_ladder.main(args)
    quality_ladder.main(args)  # the same evaluation again replaces its rows
    rows = pd.read_csv(ladder).set_index("model")
    ci = pd.read_csv(evaluate / "ci.csv").query("part == 'full'").set_index(["model", "metric"])
    assert sorted(rows.index) == sorted(pd.read_csv(evaluate / "summary.csv", index_col=0).index)
    for model, row in rows.iterrows():
        assert row.weighted == ci.loc[(model, "weighted"), "mean"]
        assert (row.w_low, row.w_high) == (ci.loc[(model, "weighted"), "ci_low"], ci.loc[(model, "weighted"), "ci_high"])
        assert (row.train_s == 12) == model.startswith("finetuned") and (row.rows == "mini QAC") == model.startswith("finetuned")
        assert math.isnan(row.eval_s) == (model == "extractive-baseline")  # no model, no time
    # the same base trained on other rows: rows of its own beside the first ones; its base and baseline replaced
    quality_ladder.main(args[:9] + ["other rows"] + args[10:])
    again = pd.read_csv(ladder)
    assert len(again) == len(rows) + rows.index.str.startswith("finetuned").sum()
    assert set(again[again.model.str.startswith("finetuned")].rows) == {"mini QAC", "other rows"}
    floor = rows.loc["extractive-baseline", "weighted"]
    printed = capsys.readouterr().out
    assert "| mini | tiny | base |  | " in printed and f"{rows.loc['base', 'weighted'] / floor:.2f}x" in printed
    assert (tmp_path / "ladder.png").is_file() and (tmp_path / "ladder.svg").is_file()
