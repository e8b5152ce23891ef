"""The results of one evaluation run as one tidy table, and the history that runs accumulate in.

Tidy table (results.parquet and results.csv): run_id, time, config_hash, run, model, test_id, question_id, part,
metric, score, weight — one row per score, so any grouping (per model, per test, per run) is one pandas call.
History: `<runs_dir>/history/<run_id>.parquet`, one file per evaluation run (written once, never appended to, so
an interrupted run cannot corrupt earlier ones); `read_history` concatenates them.
"""

from __future__ import annotations

import hashlib
import json
import math
import time
from pathlib import Path

import pandas as pd

from raftune.manifest import atomic_path, write_text


def config_hash(config_dict: dict) -> str:
    return hashlib.sha256(json.dumps(config_dict, sort_keys=True, default=str).encode()).hexdigest()[:12]


def new_run_id(run: str, digest: str) -> str:
    now = time.time()
    return f"{run}-{time.strftime('%Y%m%dT%H%M%S', time.localtime(now))}{int(now * 1000) % 1000:03d}-{digest[:6]}"


def tidy(scores: pd.DataFrame, run_id: str, run: str, digest: str, when: str) -> pd.DataFrame:
    long = scores.melt(id_vars=["model", "test_id", "question_id", "part", "weight"], var_name="metric",
                       value_name="score").dropna(subset=["score"])
    long.insert(0, "run", run)
    long.insert(0, "config_hash", digest)
    long.insert(0, "time", pd.Timestamp(when))
    long.insert(0, "run_id", run_id)
    columns = ["run_id", "time", "config_hash", "run", "model", "test_id", "question_id", "part", "metric", "score",
               "weight"]
    return long[columns].reset_index(drop=True)


def write_parquet(frame: pd.DataFrame, path: Path) -> None:
    with atomic_path(path) as tmp:
        frame.to_parquet(tmp, index=False)


def write_results(table: pd.DataFrame, out: Path, history: Path) -> dict:
    write_parquet(table, out / "results.parquet")
    write_text(out / "results.csv", table.to_csv(index=False))
    run_id = table["run_id"].iloc[0]
    write_parquet(table, history / f"{run_id}.parquet")
    return {"results": str(out / "results.parquet"), "history": str(history / f"{run_id}.parquet")}


def read_history(history: Path, run: str | None = None) -> pd.DataFrame:
    """Every run in the history folder (optionally of one config `run`), oldest first."""
    files = sorted(Path(history).glob("*.parquet"))
    if not files:
        return pd.DataFrame()
    table = pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)
    if run is not None:
        table = table[table.run == run]
    return table.sort_values("time", kind="stable").reset_index(drop=True)


# the table `raftune demo` ends with: (column, metric, why it can be missing)
TABLE = [("KeywordScore [95% CI]", "keyword_score", "no keywords"), ("weighted [95% CI]", "weighted", "no scores"),
         ("cosine", "cosine", "no scores"), ("ROUGE-L", "rouge_l", "no scores"),
         ("<ANSWER>: line", "answer_marker", "no scores"), ("quote grounding", "quote_grounding", "no quotes"),
         ("reference's language", "same_language", "too few words")]


def results_table(out: Path) -> str:
    """One row per model: means with bootstrap 95 % intervals over the tests (ci.csv), the other shown metrics, and
    tokens/s; a value that does not apply says why instead of printing NaN."""
    ci = pd.read_csv(out / "ci.csv")
    ci = ci[ci.part == "full"].set_index(["model", "metric"])
    summary = pd.read_csv(out / "summary.csv", index_col=0)
    speed, kind = summary["tokens_per_s"], summary.get("kind", pd.Series(dtype=str))
    rows = []
    for model in dict.fromkeys(ci.index.get_level_values("model")):
        row = {"model": model}
        for column, metric, missing in TABLE:
            r = ci.loc[(model, metric)]
            if math.isnan(r["mean"]):
                row[column] = f"n/a ({missing})"
            elif "CI" in column:
                row[column] = (f"{r['mean']:.3f} [{r['ci_low']:.3f}, {r['ci_high']:.3f}]" if not math.isnan(r["ci_low"])
                               else f"{r['mean']:.3f} (one test: no interval)")
            else:
                row[column] = f"{r['mean']:.3f}"
        tokens = speed.get(model, math.nan)
        untimed = "n/a (no model)" if kind.get(model) == "extractive" else "n/a (recorded)"
        row["tokens/s"] = untimed if math.isnan(tokens) else f"{tokens:.1f}"
        rows.append(row)
    return pd.DataFrame(rows).to_string(index=False)
