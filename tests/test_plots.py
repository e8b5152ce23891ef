"""The evaluation figures from a results folder: heatmap with the seed's weights in its labels, bars with bootstrap
intervals, box plots of runs over time; PNG and SVG each."""

import json

import pandas as pd
import pytest

from raftune import plots
from raftune.cli import main
from raftune.evaluate import stage
from raftune.data.testset import load_testset

from conftest import MINI, mini_config

TESTSET = MINI / "testset.json"


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """Two models (the references, and their first halves) scored twice into one history."""
    tmp = tmp_path_factory.mktemp("plots")
    items = load_testset(TESTSET)
    rows = [{"model": "reference", "test_id": i.test_id, "question_id": i.question_id, "answer": i.reference}
            for i in items]
    rows += [{"model": "half", "test_id": i.test_id, "question_id": i.question_id,
              "answer": i.reference[: len(i.reference) // 2]} for i in items]
    answers = tmp / "answers.jsonl"
    answers.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    config = mini_config(tmp / "runs", f"evaluate.history={tmp / 'out' / 'history'}")
    for _ in range(2):
        stage.score_file(config, str(TESTSET), str(answers), str(tmp / "out"))
    return tmp / "out"


def test_every_figure_as_png_and_svg(two_runs, capsys):
    assert main(["plots", "--results", str(two_runs), "--out", str(two_runs / "figures")]) == 0
    names = {p.name for p in (two_runs / "figures").iterdir()}
    for figure in ("heatmap", "heatmap-final", "ci", "runs"):
        assert {f"{figure}.png", f"{figure}.svg"} <= names
        assert (two_runs / "figures" / f"{figure}.png").stat().st_size > 10_000
    assert "heatmap.png (+ .svg)" in capsys.readouterr().out


def test_heatmap_labels_carry_the_weights_and_every_model(two_runs):
    svg = (two_runs / "figures" / "heatmap.svg").read_text()
    for label in ("EditDistance", "×1.5", "KeywordScore", "ROUGE-2", "×0.5", "weighted avg", "(spec×rel)", "reference",
                  "half"):
        assert label in svg, label
    # the perfect model's weighted average is printed as 1.00 in its cell
    assert "1.00" in svg


def test_runs_boxplot_has_one_group_per_run(two_runs):
    history = pd.concat([pd.read_parquet(p) for p in sorted((two_runs / "history").glob("*.parquet"))])
    assert history.run_id.nunique() == 2
    svg = (two_runs / "figures" / "runs.svg").read_text()
    for run_id in history.run_id.unique():
        assert run_id.rsplit("-", 1)[-1] in svg  # the config hash under each run's time


def test_missing_results_is_one_line(tmp_path, capsys):
    assert main(["plots", "--results", str(tmp_path)]) == 2
    assert capsys.readouterr().err.strip() == (f"raftune: error: no evaluation results at {tmp_path / 'results.parquet'}; "
                                               "run `raftune evaluate` first")


def test_plots_stage_draws_the_run(tmp_path, two_runs):
    """`raftune plots --config`: the run's evaluate folder in, runs/<run>/plots out."""
    import shutil

    config = mini_config(tmp_path, f"evaluate.history={two_runs / 'history'}")
    shutil.copytree(two_runs, config.stage_dir("evaluate"))
    heatmap = plots.run(config)
    assert heatmap == config.stage_dir("plots") / "heatmap.png" and heatmap.with_suffix(".svg").is_file()
    manifest = json.loads((config.stage_dir("plots") / "manifest.json").read_text())
    assert set(manifest["outputs"]) == {"heatmap", "heatmap_final", "ci", "runs"}
