"""`raftune demo`: every stage in order on one config, then the results table."""

from __future__ import annotations

import time

from raftune import merge, plots, train
from raftune.config import RunConfig
from raftune.data import stage as data_stage
from raftune.evaluate import stage as evaluate_stage
from raftune.export import stage as export_stage
from raftune.manifest import write_json

STAGES = [("data", data_stage.run), ("train", train.run), ("merge", merge.run), ("export", export_stage.run),
          ("evaluate", evaluate_stage.run), ("plots", plots.run)]


def run_all(config: RunConfig):
    timings, results = {}, {}
    for name, run in STAGES:
        started = time.time()
        print(f"\n=== {name} ===")
        results[name] = run(config)
        timings[name] = round(time.time() - started, 1)
    write_json(config.stage_dir("demo") / "timings.json", timings)
    summary = results["evaluate"]
    print("\n=== results (means over the test questions with retrieved context; 95 % bootstrap intervals over the "
          "tests) ===")
    print(evaluate_stage.results_table(config.stage_dir("evaluate")))
    print(f"\nheatmap: {results['plots']}\nstage timings (s): {timings} (total {sum(timings.values()):.0f} s)")
    return summary, timings
