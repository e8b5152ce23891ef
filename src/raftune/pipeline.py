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


def _cpu_seconds() -> float:
    import resource

    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def run_all(config: RunConfig):
    timings, cpu, results = {}, {}, {}
    for name, run in STAGES:
        started, cpu_started = time.time(), _cpu_seconds()
        print(f"\n=== {name} ===")
        results[name] = run(config)
        timings[name] = round(time.time() - started, 1)
        cpu[name] = round(_cpu_seconds() - cpu_started, 1)
    write_json(config.stage_dir("demo") / "timings.json", timings)
    # CPU seconds (all threads, and the converter's child processes): other programs on the machine do not inflate
    # them as they do wall time
    write_json(config.stage_dir("demo") / "cpu_seconds.json", cpu)
    summary = results["evaluate"]
    print("\n=== results (means over the test questions with retrieved context; 95 % bootstrap intervals over the "
          "tests) ===")
    print(evaluate_stage.results_table(config.stage_dir("evaluate")))
    print(f"\nheatmap: {results['plots']}\nstage timings (s): {timings} (total {sum(timings.values()):.0f} s)")
    return summary, timings
