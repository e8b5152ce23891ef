"""The quality ladder: every base, untrained and finetuned, beside the no-model extractive baseline, on each test set.

Baseline: the `extractive-baseline` row of the same evaluation (the best-matching sentence of the top retrieved
passage). `assets/ladder.csv` keeps one row per (test set, base, model) with KeywordScore and the weighted average
and their bootstrap 95 % intervals, the share of answers in the reference's language (German), the training rows,
training and evaluation time, and the command and commit that measured it. This script prints the ladder as a
markdown table with each model's weighted average as a ratio to the extractive baseline of its evaluation, and draws
`assets/ladder.png`.

    .venv/bin/python bench/quality_ladder.py                      # table and figure from assets/ladder.csv
    .venv/bin/python bench/quality_ladder.py --add runs/X/evaluate --testset seed-pdfs --base qwen2.5-coder-0.5b \\
        --rows "demo QAC (90)" --commit abc1234 --command "raftune evaluate ..." [--train-s 600] [--models a b]

--add reads the evaluation's ci.csv and answers.jsonl (what `raftune evaluate` writes) and replaces the rows of the
same test set, base, model, training rows and commit: a base finetuned on other rows, or measured at another commit
(another evaluation, whose retrieval may differ), gets rows of its own, and each row's ratio is to the extractive
baseline of its own evaluation.
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import pandas as pd

from raftune.figures import plt, save

LADDER = Path(__file__).resolve().parent.parent / "assets" / "ladder.csv"
COLUMNS = ["testset", "base", "model", "rows", "keyword_score", "kw_low", "kw_high", "weighted", "w_low", "w_high",
           "same_language", "train_s", "eval_s", "commit", "command"]
BASES = ["smollm2-135m", "gemma3-270m", "qwen2.5-coder-0.5b", "qwen2.5-coder-1.5b"]  # the figure's order: by size
BASELINE = "extractive-baseline"


def evaluation_rows(evaluate: Path, timing: Path, models: list[str] | None) -> pd.DataFrame:
    """One row per model of an evaluation folder: means and intervals on the whole answer, and the seconds its answers
    took in the evaluation `timing` (the same folder, or the one whose answers `evaluate` rescored)."""
    ci = pd.read_csv(evaluate / "ci.csv")
    ci = ci[ci.part == "full"].set_index(["model", "metric"])
    answers = pd.read_json(timing / "answers.jsonl", lines=True)
    # each answer of a batch carries the batch's seconds
    seconds = (answers.seconds / answers.batch_size).groupby(answers.model, sort=False).sum(min_count=1)
    get = lambda model, metric, col: ci.loc[(model, metric), col] if (model, metric) in ci.index else math.nan
    rows = []
    for m in models or list(seconds.index):
        rows.append({"model": m, "keyword_score": get(m, "keyword_score", "mean"),
                     "kw_low": get(m, "keyword_score", "ci_low"), "kw_high": get(m, "keyword_score", "ci_high"),
                     "weighted": get(m, "weighted", "mean"), "w_low": get(m, "weighted", "ci_low"),
                     "w_high": get(m, "weighted", "ci_high"), "same_language": get(m, "same_language", "mean"),
                     "eval_s": seconds.get(m, math.nan)})
    return pd.DataFrame(rows)


def add(args, path: Path) -> None:
    ladder = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=COLUMNS)
    new = evaluation_rows(Path(args.add), Path(args.timing or args.add), args.models)
    new["testset"], new["base"], new["commit"], new["command"] = args.testset, args.base, args.commit, args.command
    trained = new.model.str.startswith("finetuned")  # the run's own names (raftune.evaluate.stage.models_of_run)
    new["rows"] = [args.rows if t else math.nan for t in trained]
    new["train_s"] = [args.train_s if t else math.nan for t in trained]
    key = ["testset", "base", "model", "rows", "commit"]  # pandas matches an empty `rows` (no training) with another
    kept = ladder.merge(new[key], on=key, how="left", indicator=True)["_merge"] == "left_only"
    ladder = pd.concat([ladder[kept.values], new[COLUMNS]], ignore_index=True)
    order = lambda column: column.map({name: i for i, name in enumerate(BASES)}) if column.name == "base" else \
        column.map(lambda m: (m == BASELINE, m)) if column.name == "model" else column
    ladder = ladder.sort_values(["testset", "base", "model", "rows", "commit"], key=order, kind="stable")
    ladder.to_csv(path, index=False)
    print(f"ladder: {len(new)} rows from {args.add} -> {path}")


def interval(mean, low, high) -> str:
    if math.isnan(mean):
        return "not run"
    return f"{mean:.3f} [{low:.3f}, {high:.3f}]" if not math.isnan(low) else f"{mean:.3f}"


def table(ladder: pd.DataFrame) -> str:
    lines = ["| test set | base | model | training rows | KeywordScore [95% CI] | weighted [95% CI] | vs extractive "
             "| German answers | train s | evaluate s | commit |", "|" + " --- |" * 11]
    for _, r in ladder.iterrows():
        floor = ladder[(ladder.testset == r.testset) & (ladder.base == r.base) & (ladder.commit == r.commit)
                       & (ladder.model == BASELINE)]
        ratio = f"{r.weighted / floor.weighted.iloc[0]:.2f}x" if len(floor) else ""
        fmt = lambda v, spec: "" if pd.isna(v) else format(v, spec)
        lines.append(f"| {r.testset} | {r.base} | {r.model} | {fmt(r.rows, '')} | "
                     f"{interval(r.keyword_score, r.kw_low, r.kw_high)} | {interval(r.weighted, r.w_low, r.w_high)} | "
                     f"{ratio} | {fmt(r.same_language, '.0%')} | {fmt(r.train_s, '.0f')} | {fmt(r.eval_s, '.0f')} | "
                     f"{r.commit} |")
    return "\n".join(lines)


def figure(ladder: pd.DataFrame, path: Path) -> Path:
    """Per test set and metric: each base's untrained and best finetuned model with intervals, and the extractive
    baseline as a band."""
    testsets = list(dict.fromkeys(ladder.testset))
    metrics = [("keyword_score", "kw", "KeywordScore"), ("weighted", "w", "weighted average")]
    fig, axes = plt.subplots(len(metrics), len(testsets), figsize=(5.5 * len(testsets), 6.5), squeeze=False)
    # the same places in every panel: the named bases by size, then any other
    bases = [b for b in BASES if b in set(ladder.base)] + sorted(set(ladder.base) - set(BASES))
    for col, testset in enumerate(testsets):
        rows = ladder[ladder.testset == testset]
        for row, (metric, short, label) in enumerate(metrics):
            ax = axes[row][col]
            for x, base in enumerate(bases):
                of, commit = rows[rows.base == base], None
                for model, colour, dx in ((lambda m: m.startswith("base"), "tab:gray", -0.12),
                                          (lambda m: m.startswith("finetuned"), "tab:blue", 0.12)):
                    hits = of[of.model.map(model).astype(bool)].dropna(subset=[metric])
                    if len(hits):
                        best = hits.loc[hits[metric].idxmax()]
                        err = [[best[metric] - best[f"{short}_low"]], [best[f"{short}_high"] - best[metric]]]
                        ax.errorbar(x + dx, best[metric], yerr=err, fmt="o", color=colour, capsize=4)
                        commit = best.commit  # finetuned after base: the band is its evaluation's baseline
                floor = of[of.model == BASELINE]
                if commit is not None:
                    floor = floor[floor.commit == commit]
                if len(floor):
                    f = floor.iloc[0]
                    ax.fill_between([x - 0.3, x + 0.3], f[f"{short}_low"], f[f"{short}_high"], color="tab:orange",
                                    alpha=0.25, linewidth=0)
                    ax.plot([x - 0.3, x + 0.3], [f[metric]] * 2, color="tab:orange")
            ax.set_xticks(range(len(bases)), bases, rotation=12, fontsize=8)
            ax.set_ylabel(label)
            ax.set_title(testset, fontsize=10)
            ax.set_xlim(-0.5, len(bases) - 0.5)
            ax.set_ylim(0, 0.8)
    handles = [plt.Line2D([], [], marker="o", linestyle="", color="tab:gray", label="base"),
               plt.Line2D([], [], marker="o", linestyle="", color="tab:blue", label="finetuned (best of HF, GGUF)"),
               plt.Line2D([], [], color="tab:orange", label="extractive baseline (band: 95 % CI)")]
    fig.legend(handles=handles, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.05, 1, 1))
    return save(fig, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ladder", default=str(LADDER), help="the ladder's CSV; the figure goes beside it as .png "
                                                              "(default: assets/ladder.csv)")
    parser.add_argument("--add", help="an evaluation folder whose rows to add to the ladder")
    parser.add_argument("--testset", help="with --add: demo or seed-pdfs")
    parser.add_argument("--base", help="with --add: the base's name")
    parser.add_argument("--rows", help="with --add: what the finetuned models were trained on")
    parser.add_argument("--commit", help="with --add: the commit the models were trained and evaluated at")
    parser.add_argument("--command", help="with --add: the command that measured it")
    parser.add_argument("--train-s", type=float, default=math.nan, help="with --add: training seconds on 2 cores")
    parser.add_argument("--models", nargs="*", help="with --add: only these models of the evaluation")
    parser.add_argument("--timing", help="with --add: the evaluation whose answers --add rescored (`raftune evaluate "
                                         "--answers`), for the seconds they took")
    args = parser.parse_args(argv)
    path = Path(args.ladder)
    if args.add:
        add(args, path)
    ladder = pd.read_csv(path)
    print(table(ladder))
    print(f"\nfigure: {figure(ladder, path.with_suffix('.png'))}")


if __name__ == "__main__":
    main()
