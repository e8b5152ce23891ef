"""CPU demo time and memory: `raftune demo` on the default demo (configs/demo-gemma.yaml, `make demo`), per stage.

Baselines: the budgets a real-model demo must stay within on 2 cores after the install, 15 minutes of wall time and
4 GB of peak memory. The demo runs as the CLI in a child process; its memory is sampled with the memory of all its
children (each stage, and llama.cpp's converter, runs in one) added, every second (proportional set sizes are read
from the kernel's page maps: at five samples a second the sampler took a sixth of a core). Prints the stage
timings, the peak (and the peak of each stage), and the ratios of both to their budgets (below 1.0 is within budget).

    .venv/bin/python bench/cpu_demo_time.py [--cold] [--config configs/demo-gemma.yaml] [key=value ...]

--cold: an empty model cache, so the base model's build from its package is counted, as on a clean machine.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

BUDGET_S = 15 * 60.0
BUDGET_BYTES = 4e9


def tree_memory(process: psutil.Process) -> list[tuple[int, int, str]]:
    """(resident bytes, proportional set size, short command line) of the process and each of its descendants. The
    stages run in processes of their own beside the demo's: each maps the same libraries (torch alone is hundreds of
    MB), which every process's resident size counts whole and the proportional set size splits among them, so the
    sum of the latter is the memory the tree takes from the machine."""
    out = []
    for p in [process, *process.children(recursive=True)]:
        try:
            full = p.memory_full_info()
            out.append((full.rss, full.pss, " ".join(p.cmdline())[-70:]))
        except psutil.NoSuchProcess:
            pass
    return out


def stage_at(seconds: float, timings: dict) -> str:
    """The stage that was running `seconds` after the start, from the stages' durations in their order."""
    elapsed = 0.0
    for stage, duration in timings.items():
        elapsed += duration
        if seconds <= elapsed:
            return stage
    return "after the last stage"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cold", action="store_true", help="count the base model's build (use an empty cache)")
    parser.add_argument("--config", default="configs/demo-gemma.yaml", help="recipe (default: configs/demo-gemma.yaml)")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()

    env = dict(os.environ)
    if args.cold:
        env["RAFTUNE_CACHE"] = tempfile.mkdtemp(prefix="raftune-cold-")
    runs = tempfile.mkdtemp(prefix="raftune-bench-")
    command = [sys.executable, "-m", "raftune", "demo", "--config", args.config, f"runs_dir={runs}", *args.overrides]
    samples, done = [], threading.Event()  # (seconds after the start, PSS sum, RSS sum, the processes then)
    started = time.time()
    child = subprocess.Popen(command, env=env)
    process = psutil.Process(child.pid)

    def sample():
        while not done.is_set():
            processes = tree_memory(process)
            samples.append((time.time() - started, sum(p[1] for p in processes), sum(p[0] for p in processes),
                            processes))
            done.wait(1.0)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    code = child.wait()
    total = time.time() - started
    done.set()
    sampler.join()
    if code:
        sys.exit(f"cpu demo: `{' '.join(command)}` failed with exit status {code}")
    demo_dir = next(Path(runs).glob("*/demo"))
    timings = json.loads((demo_dir / "timings.json").read_text())
    cpu = json.loads((demo_dir / "cpu_seconds.json").read_text())
    cache = "cold: the base model built inside" if args.cold else "model cache as found"
    print(f"\ncpu demo: {total:.0f} s wall on {os.cpu_count()} cores ({cache}); stages (s) {timings}")
    print(f"CPU seconds per stage {cpu} (total {sum(cpu.values()):.0f}; on {os.cpu_count()} busy cores at least "
          f"{sum(cpu.values()) / os.cpu_count():.0f} s of wall time; more wall time means other load or idle cores)")
    import resource

    single = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024  # kB on Linux; catches short spikes
    peak = max(samples, key=lambda sample: sample[1])
    print(f"peak memory: {peak[1] / 1e9:.2f} GB (proportional set size of the demo and its children together, sampled "
          f"every second; their resident sizes summed, shared pages counted once per process: "
          f"{max(sample[2] for sample in samples) / 1e9:.2f} GB; largest single process {single / 1e9:.2f} GB resident)")
    per_stage = {}
    for seconds, pss, _, _ in samples:
        stage = stage_at(seconds, timings)
        per_stage[stage] = max(per_stage.get(stage, 0), pss)
    print("sampled peak per stage: " + ", ".join(f"{stage} {pss / 1e9:.2f} GB" for stage, pss in per_stage.items()))
    where = "; ".join(f"{pss / 1e9:.2f} GB ({rss / 1e9:.2f} resident) {cmd}" for rss, pss, cmd in peak[3])
    print(f"the sampled peak: {peak[0]:.0f} s after the start, in stage {stage_at(peak[0], timings)}: {where}")
    print(f"ratio to the {BUDGET_S / 60:.0f}-minute budget: {total / BUDGET_S:.2f}; "
          f"to the {BUDGET_BYTES / 1e9:.0f} GB budget: {max(peak[1], single) / BUDGET_BYTES:.2f} (resident sizes "
          f"summed: {max(sample[2] for sample in samples) / BUDGET_BYTES:.2f})")


if __name__ == "__main__":
    main()
