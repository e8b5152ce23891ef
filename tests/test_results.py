"""The results the README quotes are the results of the committed run they come from: its demo table is, character
for character, the table that notebook 00 printed in its committed full run."""

from pathlib import Path

import nbformat

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
