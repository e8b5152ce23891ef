"""CPU training step of the SmolLM2 recipes: seconds per optimiser step and peak resident memory, one variant per
child process (so each peak is its own), on the recipe's own RAFT rows, through `raftune.train.make_trainer` (the code
path of `raftune train`). Baseline: the QLoRA recipe (configs/smollm2-135m-qlora-raft.yaml).

    .venv/bin/python bench/cpu_train_step.py [--steps 4] [--variants nf4,lora,...]

Needs the recipe's data stage (`raftune data build --config configs/smollm2-135m-qlora-raft.yaml runs_dir=DIR`)
and `--runs DIR`.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

RECIPE = "configs/smollm2-135m-qlora-raft.yaml"
VARIANTS = {
    "nf4": [],  # the QLoRA recipe as committed
    "lora": ["quantization=none"],
    "lora+completion_logits": ["quantization=none", "fast.completion_logits=true"],
    "lora+completion_logits+packing": ["quantization=none", "fast.completion_logits=true", "fast.packing=true"],
}


def child(runs: str, steps: int, overrides: list[str]) -> None:
    from transformers import TrainerCallback

    from raftune.config import load_config
    from raftune.models import load_tokenizer, resolve_base
    from raftune.sft_data import tokenize_rows
    from raftune.train import load_examples, make_trainer

    config = load_config(RECIPE, [f"runs_dir={runs}", f"sft.max_steps={steps}", "train.sample_prompts=0",
                                  "sft.logging_steps=1", *overrides])
    base = resolve_base(config)
    tokenizer = load_tokenizer(base)
    train_set, _ = tokenize_rows(load_examples(config)["train"], tokenizer, 1024)
    stamps = []

    class Clock(TrainerCallback):
        def on_step_end(self, args, state, control, **kwargs):
            stamps.append(time.time())

    trainer = make_trainer(config, base, tokenizer, train_set, None, config.stage_dir("train"), [Clock()])
    started = time.time()
    trainer.train()
    steps_s = [b - a for a, b in zip([started, *stamps], stamps)]
    losses = [r["loss"] for r in trainer.state.log_history if "loss" in r]
    print(json.dumps({"first_step_s": steps_s[0], "later_steps_s": sum(steps_s[1:]) / max(1, len(steps_s) - 1),
                      "loss_first": losses[0], "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", required=True)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--child", nargs="*")
    args = parser.parse_args()
    if args.child is not None:
        return child(args.runs, args.steps, args.child)
    results = {}
    for name in args.variants.split(","):
        out = subprocess.run([sys.executable, __file__, "--runs", args.runs, "--steps", str(args.steps), "--child",
                              *VARIANTS[name]], capture_output=True, text=True)
        if out.returncode:
            sys.exit(out.stderr[-3000:])
        results[name] = json.loads(out.stdout.strip().splitlines()[-1])
        print(name, results[name], flush=True)
    base = results.get("nf4")
    print("\n| variant | s/step (after the first) | peak RSS GB | loss at step 1 | x nf4 |\n|---|---:|---:|---:|---:|")
    for name, r in results.items():
        ratio = f"{base['later_steps_s'] / r['later_steps_s']:.2f}" if base else ""
        print(f"| {name} | {r['later_steps_s']:.2f} | {r['peak_rss_gb']:.2f} | {r['loss_first']:.3f} | {ratio} |")


if __name__ == "__main__":
    main()
