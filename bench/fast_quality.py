"""What the fast recipe learns against the seed recipe: both trained through `raftune train` on a real model and real
RAFT rows for the same epochs, compared by held-out completion loss and wall time.

    python bench/fast_quality.py                                   # SmolLM2-135M-Instruct, the seed's data.arrow
    python bench/fast_quality.py --recipes seed fast fast-lr1e-4 --extra "fast-lr1e-4=fast:sft.learning_rate=1e-4"
    python bench/fast_quality.py --tiny                            # CPU: the tiny base and the demo rows (CI)

Each recipe is the shipped config file with only the base, the data and the epochs replaced (and the overrides of
`--extra`); it runs in its own process (Liger patches model classes globally). The held-out loss is
`raftune.train.completion_loss` on the same held-out rows for every recipe (mean cross-entropy over answer tokens,
one function for all, whatever the recipe's batching); `metrics.json` of each run holds it. A recipe passes when
its loss is within 2 % of the seed recipe's.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from train_throughput import with_variants  # bench/ is this script's own folder

ROOT = Path(__file__).resolve().parents[1]
RECIPES = {"seed": "configs/mistral-7b-qlora-raft.yaml", "fast": "configs/mistral-7b-qlora-raft-fast.yaml",
           "memory": "configs/mistral-7b-qlora-raft-memory.yaml", "lowmem": "configs/mistral-7b-qlora-raft-lowmem.yaml"}
SEED_ROWS = ROOT.parent / "shared" / "seed-data" / "raft" / "data.arrow"
LIMIT = 0.02


def overrides(args, name: str) -> list[str]:
    """The shipped recipe on this bench's base, rows and epochs; evaluation and checkpoints off, the adapter kept."""
    data = (["data.raft=null"] if args.tiny else [f"data.raft={args.rows}", "data.clean=repair"])
    out = [f"base={args.base}", f"run=quality-{name}", f"runs_dir={args.runs}", *data, "data.eval_fraction=0.1",
           f"sft.num_train_epochs={args.epochs}", "sft.max_steps=-1", "sft.eval_strategy=no",
           "sft.save_strategy=no", "sft.report_to=none", "sft.disable_tqdm=true", "train.sample_prompts=0"]
    if args.tiny:  # CPU: fp32 compute, plain AdamW (8-bit AdamW needs CUDA), a budget the tiny rows fill
        out += ["sft.bf16=false", "quantization.bnb_4bit_compute_dtype=float32", "sft.optim=adamw_torch"]
    return out


def run_one(args, name: str, spec: list[str]) -> dict:
    """One recipe in this process: data stage, then `raftune train`'s own run; its metrics and wall time."""
    sys.path.insert(0, str(ROOT / "src"))
    from raftune import train
    from raftune.config import load_config
    from raftune.data import stage as data_stage

    config = load_config(ROOT / spec[0], [*spec[1:], *overrides(args, name)])
    data_stage.run(config)
    started = time.perf_counter()
    adapter = train.run(config)
    wall = time.perf_counter() - started
    metrics = json.loads((adapter / "metrics.json").read_text())
    return {"recipe": name, "spec": spec, "wall_s": wall, "steps": metrics["steps"],
            "train_loss": metrics["train_loss"], "heldout_loss": metrics["eval_completion_loss"],
            "learning_rate": config.sft["learning_rate"], "tokens_per_batch": config.fast.tokens_per_batch}


def table(rows: list[dict]) -> str:
    seed = next((r for r in rows if r["recipe"] == "seed"), None)
    lines = ["| recipe | learning rate | optimiser steps | wall s | held-out completion loss | vs seed |",
             "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        diff = "" if seed is None else f"{(r['heldout_loss'] - seed['heldout_loss']) / seed['heldout_loss']:+.2%}"
        lines.append(f"| {r['recipe']} | {r['learning_rate']:.2e} | {r['steps']} | {r['wall_s']:.0f} | "
                     f"{r['heldout_loss']:.4f} | {diff} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="*", default=list(RECIPES))
    parser.add_argument("--extra", nargs="*", default=[], help="NAME=RECIPE:key=value,key=value (a recipe variant)")
    parser.add_argument("--base", default="smollm2-135m-instruct")
    parser.add_argument("--rows", default=str(SEED_ROWS), help="the RAFT rows to train on (any shape data.raft reads)")
    parser.add_argument("--epochs", type=float, default=3)
    parser.add_argument("--tiny", action="store_true", help="the tiny base and the demo's own rows, on the CPU")
    parser.add_argument("--runs", default=None, help="runs_dir for the recipes' runs (default: a temporary folder)")
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/bench-quality"))
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.tiny:
        args.base, args.epochs = "tiny", min(args.epochs, 1)
    recipes = {name: [path] for name, path in RECIPES.items()}
    with_variants(recipes, args.extra)
    if args.one:
        print("ROW " + json.dumps(run_one(args, args.one, recipes[args.one])), flush=True)
        return

    if not args.tiny and not Path(args.rows).is_file():
        sys.exit(f"fast_quality: no RAFT rows at {args.rows} (the seed's data.arrow sits in ../shared/seed-data)")
    args.runs = args.runs or tempfile.mkdtemp(prefix="raftune-quality-")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    for name in args.recipes:
        cmd = [sys.executable, __file__, *sys.argv[1:], "--runs", args.runs, "--one", name]
        proc = subprocess.run(cmd, capture_output=True, text=True)
        found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
        if not found:
            print(f"fast_quality: {name} failed (exit {proc.returncode}):\n{(proc.stdout + proc.stderr)[-3000:]}")
            continue
        rows.append(json.loads(found[-1]))
        print(f"fast_quality: {name}: held-out loss {rows[-1]['heldout_loss']:.4f}, {rows[-1]['steps']} steps, "
              f"{rows[-1]['wall_s']:.0f} s", flush=True)
    (out / "quality.json").write_text(json.dumps({"argv": sys.argv[1:], "rows": rows}, indent=1))
    print(table(rows))
    seed = next((r for r in rows if r["recipe"] == "seed"), None)
    for r in rows:
        if seed and r is not seed:
            diff = abs(r["heldout_loss"] - seed["heldout_loss"]) / seed["heldout_loss"]
            print(f"{r['recipe']} held-out loss vs seed: {diff:.2%} ({'PASS' if diff <= LIMIT else 'FAIL'}, "
                  f"limit {LIMIT:.0%}); wall time {r['wall_s'] / seed['wall_s']:.2f}x the seed's")


if __name__ == "__main__":
    main()
