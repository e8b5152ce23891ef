"""Plots: the models x metrics heatmap (the seed's figure) and the training loss curve."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

from raftune import RaftuneError  # noqa: E402
from raftune.manifest import Stage  # noqa: E402


def heatmap(summary: pd.DataFrame, path: Path, title: str) -> Path:
    metrics = [c for c in summary.columns if c != "tokens_per_s"]
    fig, ax = plt.subplots(figsize=(1.6 * len(metrics) + 2.5, 0.6 * len(summary) + 1.6))
    image = ax.imshow(summary[metrics].to_numpy(), cmap="viridis", vmin=0, vmax=1, aspect="auto")
    ax.set_xticks(range(len(metrics)), metrics)
    ax.set_yticks(range(len(summary)), summary.index)
    for (r, c), value in pd.DataFrame(summary[metrics].to_numpy()).stack().items():
        ax.text(c, r, f"{value:.2f}", ha="center", va="center", color="white" if value < 0.6 else "black")
    fig.colorbar(image, ax=ax, fraction=0.04)
    ax.set_title(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def loss_curve(log_path: Path, path: Path) -> Path | None:
    records = [json.loads(line) for line in log_path.read_text().splitlines() if line.strip()]
    train = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
    if not train:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot(*zip(*train), label="train loss")
    if evals:
        ax.plot(*zip(*evals), "o-", label="eval loss")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (completion tokens)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def length_histogram(lengths: dict[str, list[int]], path: Path, max_length: int | None = None) -> Path:
    """Token lengths of prompts and completions (the seed notebooks' length plot), with the training budget."""
    fig, axes = plt.subplots(1, len(lengths), figsize=(4.5 * len(lengths), 3.2), squeeze=False)
    for ax, (name, values) in zip(axes[0], lengths.items()):
        ax.hist(values, bins=30, color="tab:blue")
        if max_length and name == "prompt":
            ax.axvline(max_length, color="tab:red", linestyle="--", label=f"max_length {max_length}")
            ax.legend()
        ax.set_xlabel(f"{name} tokens")
        ax.set_ylabel("rows")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run(config):
    summary_path = config.stage_dir("evaluate") / "summary.csv"
    if not summary_path.is_file():
        raise RaftuneError(f"no evaluation summary at {summary_path}; run `raftune evaluate` first")
    stage = Stage(config, "plots", {"summary": str(summary_path)})
    summary = pd.read_csv(summary_path, index_col="model")
    path = heatmap(summary, stage.dir / "heatmap.png", f"{config.run}: mean score per model on the test set")
    stage.outputs = {"heatmap": str(path)}
    stage.finish()
    return path
