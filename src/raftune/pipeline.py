"""`raftune demo`: every stage in order on one config, then the results table."""

from __future__ import annotations

import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor

from raftune import merge, plots, train
from raftune.config import RunConfig
from raftune.data import stage as data_stage
from raftune.evaluate import stage as evaluate_stage
from raftune.export import stage as export_stage
from raftune.manifest import write_json

STAGES = [("data", data_stage.run), ("train", train.run), ("merge", merge.run), ("export", export_stage.run),
          ("evaluate", evaluate_stage.run), ("plots", plots.run)]
# The stages that load a model run in a process of their own: what one frees goes back to the system before the next
# starts. In one process the allocator kept it (Gemma 3 270M's demo held 2.9 GB after its export, with no model
# loaded, and its evaluation then peaked 1.2 GB higher than alone).
OWN_PROCESS = {"train", "merge", "export", "evaluate"}


def _cpu_seconds() -> float:
    import resource

    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def _in_own_process(run, config: RunConfig):
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(run, config).result()


def run_all(config: RunConfig):
    timings, cpu, results = {}, {}, {}
    for name, run in STAGES:
        started, cpu_started = time.time(), _cpu_seconds()
        print(f"\n=== {name} ===")
        results[name] = _in_own_process(run, config) if name in OWN_PROCESS else run(config)
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
