"""Plots: the seed's two evaluation figures (models x metrics heatmap, box plots of runs over time), bars with
bootstrap confidence intervals, and the merge report's per-layer figure. Every figure is written as PNG and SVG.

The evaluation plots read only the tidy results table (results.parquet) and the history, so they can be redrawn
from any past run without the models.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from raftune import RaftuneError
from raftune.evaluate.metrics import LABELS, METRICS, UNWEIGHTED, WEIGHTS
from raftune.evaluate.results import read_history
from raftune.evaluate.scoring import bootstrap_ci, summarise
from raftune.evaluate.stage import history_dir
from raftune.figures import plt, save
from raftune.manifest import Stage


def _heatmap_columns(summary: pd.DataFrame) -> list[tuple[str, str]]:
    """(column, label) in the seed's order: the weighted metrics with their weights, the averages, the rest."""

    columns = [(m, f"{LABELS[m]}\n×{w:g}") for m, w in WEIGHTS.items()]
    columns += [("weighted", "weighted avg"), ("weighted_q", "weighted avg\n(spec×rel)")]
    columns += [(m, f"{LABELS[m]}\n(not weighted)") for m in UNWEIGHTED]
    return [(c, label) for c, label in columns if c in summary.columns and summary[c].notna().any()]


def heatmap(summary: pd.DataFrame, path: Path, title: str) -> Path:
    """Models x metrics, mean over the test questions; weights in the column labels, n/a where a metric does not
    apply (a model that quotes nothing has no quote grounding)."""
    columns = _heatmap_columns(summary)
    values = summary[[c for c, _ in columns]].to_numpy(dtype=float)
    fig, ax = plt.subplots(figsize=(1.05 * len(columns) + 2.8, 0.55 * len(summary) + 2.0))
    cmap = plt.get_cmap("viridis").with_extremes(bad="#dddddd")  # grey: the metric does not apply
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(columns)), [label for _, label in columns], fontsize=8)
    ax.set_yticks(range(len(summary)), summary.index)
    for (r, c), value in np.ndenumerate(values):
        text = "n/a" if np.isnan(value) else f"{value:.2f}"
        ax.text(c, r, text, ha="center", va="center", fontsize=8,
                color="black" if np.isnan(value) or value >= 0.6 else "white")

    names = [c for c, _ in columns]
    # white gaps between the weighted metrics, their averages and the unweighted rest
    for first in ("weighted", next((c for c in names if c in UNWEIGHTED), None)):
        if first in names and names.index(first) > 0:
            ax.axvline(names.index(first) - 0.5, color="white", linewidth=3)
    fig.colorbar(image, ax=ax, fraction=0.03)
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def ci_bars(ci: pd.DataFrame, path: Path, title: str, part: str = "full",
            metrics=("keyword_score", "cosine", "rouge_l", "weighted")) -> Path:
    """Mean per model and metric with its bootstrap 95 % interval (resampled over tests)."""

    frame = ci[(ci.part == part) & ci.metric.isin(metrics)]
    models = list(dict.fromkeys(frame.model))
    width = 0.8 / max(len(models), 1)
    fig, ax = plt.subplots(figsize=(1.9 * len(metrics) + 2.5, 3.8))
    colors = plt.get_cmap("tab10")
    for n, model in enumerate(models):
        rows = frame[frame.model == model].set_index("metric").reindex(list(metrics))
        x = np.arange(len(metrics)) + (n - (len(models) - 1) / 2) * width
        errors = np.vstack([rows["mean"] - rows["ci_low"], rows["ci_high"] - rows["mean"]]).clip(min=0)
        ax.bar(x, rows["mean"], width, yerr=np.nan_to_num(errors), capsize=3, label=model, color=colors(n % 10))
    ax.set_xticks(range(len(metrics)), [LABELS[m] for m in metrics])
    ax.set_ylim(0, 1)
    ax.set_ylabel("mean score (95 % bootstrap CI over tests)")
    ax.legend(fontsize=8, ncols=min(len(models), 3), loc="upper left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def runs_boxplot(history: pd.DataFrame, path: Path, title: str, metric: str = "weighted", part: str = "full") -> Path:
    """Per evaluation run (oldest left) one box per model over the questions' scores: the seed's "runs over time"."""
    frame = history[(history.metric == metric) & (history.part == part)]
    if frame.empty:
        raise RaftuneError(f"no '{metric}' scores in the history to draw runs over time")
    runs = list(dict.fromkeys(frame.sort_values("time", kind="stable").run_id))
    models = list(dict.fromkeys(frame.model))
    width = 0.8 / len(models)
    colors = plt.get_cmap("tab10")
    fig, ax = plt.subplots(figsize=(max(6.0, 1.1 * len(runs) * max(1, len(models) / 3) + 2), 4.2))
    for n, model in enumerate(models):
        data = [frame[(frame.run_id == r) & (frame.model == model)]["score"].to_numpy() for r in runs]
        positions = np.arange(len(runs)) + (n - (len(models) - 1) / 2) * width
        kept = [(p, d) for p, d in zip(positions, data) if len(d)]
        if not kept:
            continue
        boxes = ax.boxplot([d for _, d in kept], positions=[p for p, _ in kept], widths=width * 0.9,
                           patch_artist=True, showfliers=False)
        for box in boxes["boxes"]:
            box.set_facecolor(colors(n % 10))
        ax.plot([], [], "s", color=colors(n % 10), label=model)
    times = frame.drop_duplicates("run_id").set_index("run_id")["time"]
    ax.set_xticks(range(len(runs)), [f"{pd.Timestamp(times[r]):%m-%d %H:%M}\n{r.rsplit('-', 1)[-1]}" for r in runs],
                  fontsize=8)
    ax.set_ylim(0, 1)
    ax.set_ylabel(f"{metric} per question")
    ax.set_xlabel("evaluation run (time, config hash)")
    ax.legend(fontsize=8, ncols=min(len(models), 3), loc="upper left")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return save(fig, path)


def _wide(table: pd.DataFrame) -> pd.DataFrame:
    """The tidy table back to one row per (model, test, question, part), models in their original order."""

    wide = table.pivot_table(index=["model", "test_id", "question_id", "part", "weight"], columns="metric",
                             values="score", sort=False).reset_index()
    for metric in METRICS:
        if metric not in wide:
            wide[metric] = np.nan
    return wide


def plot_results(results: Path, out: Path, history: pd.DataFrame | None, name: str) -> dict[str, str]:
    """Every evaluation figure from a results folder (runs/<run>/evaluate or `raftune evaluate --out DIR`)."""

    path = Path(results) / "results.parquet"
    if not path.is_file():
        raise RaftuneError(f"no evaluation results at {path}; run `raftune evaluate` first")
    table = pd.read_parquet(path)
    scores = _wide(table)
    run_id = table.run_id.iloc[0]
    paths = {
        "heatmap": heatmap(summarise(scores, "full"), out / "heatmap.png",
                           f"{name}: mean score per model, whole answer ({run_id})"),
        "heatmap_final": heatmap(summarise(scores, "final"), out / "heatmap-final.png",
                                 f"{name}: mean score per model, final answer after <ANSWER>: ({run_id})"),
        "ci": ci_bars(bootstrap_ci(scores), out / "ci.png", f"{name}: whole answer, 95 % bootstrap CI ({run_id})"),
    }
    if history is not None and not history.empty:
        paths["runs"] = runs_boxplot(history, out / "runs.png", f"{name}: weighted average per question, by run")
    return {k: str(v) for k, v in paths.items()}


def history_of(config) -> pd.DataFrame:
    return read_history(history_dir(config, Path(config.runs_dir) / "history"), run=config.run)


def run(config, results: str | Path | None = None, out: str | Path | None = None):
    """The plots stage (runs/<run>/plots), or `raftune plots --results DIR --out DIR` for any results folder."""
    if results is None:
        stage = Stage(config, "plots", {"results": str(config.stage_dir("evaluate") / "results.parquet")})
        stage.outputs = plot_results(config.stage_dir("evaluate"), stage.dir, history_of(config), config.run)
        stage.finish()
        paths = stage.outputs
    else:
        results = Path(results)
        out = Path(out) if out else results / "plots"
        history = results / "history"

        paths = plot_results(results, out, read_history(history) if history.is_dir() else None, results.name)
    print("plots: " + ", ".join(f"{Path(p).name} (+ .svg)" for p in paths.values()) + f" -> {Path(paths['heatmap']).parent}")
    return Path(paths["heatmap"])
