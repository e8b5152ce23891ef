"""`raftune demo`: every stage in order on one config (those up to date skipped), then the results table."""

from __future__ import annotations

import importlib
import json
import multiprocessing
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd

from raftune import manifest
from raftune.config import RunConfig, load_config
from raftune.evaluate.results import results_table
from raftune.manifest import write_json

# Each stage runs in a process of its own, imported there: what one frees goes back to the system before the next
# starts, and the demo's own process holds no model library. In one process the allocator kept it (Gemma 3 270M's
# demo held 2.9 GB after its export with no model loaded, and its evaluation peaked 1.2 GB higher than alone).
STAGES = [(name, reads.module) for name, reads in manifest.STAGES.items()]


def _cpu_seconds() -> float:
    import resource

    return sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
               for f in ("ru_utime", "ru_stime"))


def checked_config(path: str, overrides: list[str]) -> RunConfig:
    """The recipe, read and checked in a process of its own: the check imports peft, trl and transformers, half a
    gigabyte that the demo's own process would otherwise hold beside every stage."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(load_config, path, overrides).result()


def _run_stage(module: str, config: RunConfig):
    return importlib.import_module(module).run(config)


def _finished_result(name: str, config: RunConfig):
    """What an up-to-date stage's run returned, from its manifest: the evaluation's summary, the heatmap's path."""
    outputs = json.loads((config.stage_dir(name) / "manifest.json").read_text())["outputs"]
    if name == "evaluate":
        return pd.DataFrame.from_dict(outputs["summary"], orient="index").rename_axis("model")
    return Path(outputs["heatmap"]) if name == "plots" else None


def run_all(config: RunConfig, force: bool = False):
    """Every stage in order; one that is up to date (`raftune.manifest.up_to_date`) is skipped unless `force`."""
    timings, cpu, results = {}, {}, {}
    for name, module in STAGES:
        started, cpu_started = time.time(), _cpu_seconds()
        if manifest.skip(config, name, force):
            results[name] = _finished_result(name, config)
        else:
            print(f"\n=== {name} ===", flush=True)
            with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                results[name] = pool.submit(_run_stage, module, config).result()
        timings[name] = round(time.time() - started, 1)
        cpu[name] = round(_cpu_seconds() - cpu_started, 1)
    write_json(config.stage_dir("demo") / "timings.json", timings)
    # CPU seconds (all threads, the stages' processes and the converter's): other programs on the machine do not
    # inflate them as they do wall time
    write_json(config.stage_dir("demo") / "cpu_seconds.json", cpu)
    summary = results["evaluate"]
    print("\n=== results (means over the test questions with retrieved context; 95 % bootstrap intervals over the "
          "tests) ===")
    print(results_table(config.stage_dir("evaluate")))
    print(f"\nheatmap: {results['plots']}\nstage timings (s): {timings} (total {sum(timings.values()):.0f} s)")
    return summary, timings
