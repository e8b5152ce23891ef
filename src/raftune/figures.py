"""Matplotlib set up for files (no display), `save` (PNG and SVG), and the figures the training and data stages draw:
the loss curve and token-length histograms. The evaluation's figures are in `raftune.plots`.
"""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on CI or servers
matplotlib.rcParams["svg.fonttype"] = "none"  # SVG text stays text: searchable, editable, a tenth of the size
import matplotlib.pyplot as plt  # noqa: E402

from raftune.manifest import make_dir  # noqa: E402


def save(fig, path: Path) -> Path:
    """`path` (.png) and the same name in .svg; returns the PNG."""
    path = Path(path).with_suffix(".png")
    make_dir(path.parent)
    fig.savefig(path, dpi=120)
    fig.savefig(path.with_suffix(".svg"))
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
    make_dir(path.parent)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def merge_layers(layers, path: Path) -> Path:
    """Per adapted layer: the LoRA delta and how far the dequantized and the unsafe 4-bit merges land from the pristine
    one, each relative to the weight's norm (`merge.merge`'s layer report)."""
    fig, ax = plt.subplots(figsize=(10, 3.5))
    layers[["lora_delta", "dequantized_vs_pristine", "unsafe_4bit_vs_pristine"]].plot(ax=ax, marker=".", lw=1)
    ax.set(yscale="log", ylabel="relative to the weight's norm", xlabel="",
           title="per layer: LoRA delta and merge differences")
    ax.set_xticks(range(len(layers)), [n.replace("model.layers.", "").replace("_proj", "") for n in layers.index],
                  rotation=90, fontsize=7)
    fig.tight_layout()
    return save(fig, path)
