"""CPU demo time: the whole pipeline of `raftune demo` on configs/demo-tiny.yaml, timed per stage.

Baseline: the 10-minute budget that the demo must stay within on 2 cores after the install (the tiny base model,
built once and cached, is built before the clock starts unless --cold is given). Prints the stage timings and the
ratio of the measured time to that budget (below 1.0 is within budget).

    .venv/bin/python bench/cpu_demo_time.py [--cold] [key=value ...]
"""

from __future__ import annotations

import argparse
import tempfile
import time

BUDGET_S = 600.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="count the tiny model build (use an empty cache)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    import os

    from raftune.config import load_config
    from raftune.models import resolve_base
    from raftune.pipeline import run_all

    if args.cold:
        os.environ["RAFTUNE_CACHE"] = tempfile.mkdtemp(prefix="raftune-cold-")
    runs = tempfile.mkdtemp(prefix="raftune-bench-")
    config = load_config("configs/demo-tiny.yaml", [f"runs_dir={runs}", *args.overrides])
    started = time.time()
    if not args.cold:
        resolve_base(config)  # build or reuse the cached tiny model outside the timed region
        started = time.time()
    _, timings = run_all(config)
    total = time.time() - started
    print(f"\ncpu demo: {total:.0f} s on {os.cpu_count()} cores; stages {timings}")
    print(f"ratio to the {BUDGET_S:.0f} s budget: {total / BUDGET_S:.2f}")


if __name__ == "__main__":
    main()
