"""The results the README quotes are the results of the committed run they come from: its demo table is, character
for character, the table that notebook 00 printed in its committed full run, and its picture of the assistant is
`make demo`'s model answering a question of the demo's test set (assets/screenshot.py's record beside it)."""

import json
from pathlib import Path

import nbformat

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
