"""GPU training throughput: the seed's QLoRA recipe against raftune's fast recipe, its memory mode and each lever alone.

The model is shaped like Mistral-7B-v0.3 (32 layers, 4096 wide, GQA 32/8 heads, 14336 MLP, 32768 vocabulary) with
random weights, quantised to NF4 exactly as a loaded checkpoint would be (double quantisation, bf16 compute): the
time and memory of a training step depend on the shapes, the number formats and the kernels, not on the weight values,
so no 14 GB download is needed. The training sequences are random token ids whose lengths follow the built RAFT
dataset's distribution (`--lengths runs/<run>/train/token_report.json`, prompt and completion lengths per row) or,
by default, 700-2048 tokens with the last 20% as the completion.

Every recipe is a config file, turned into a model by the same `raftune.train.adapt_model` (QLoRA preparation,
LoRA, then `raftune.fast.apply`) and into batches by the same `raftune.fast` grouping and collator that `raftune train`
uses; the step (bf16 autocast, loss summed over the step's label tokens and divided by their count, gradient clipping
at 1.0, the recipe's optimiser and linear warm-up schedule) mirrors transformers.Trainer's. On CUDA each recipe runs in
its own process (Liger patches modules globally; peak memory is per process).

Printed for each: real (non-padding) tokens/s, peak GPU memory (torch's max allocated; reserved in the JSON), model
FLOP utilisation (LoRA training FLOPs of the real tokens, no recomputation counted, over the bf16 matmul rate measured
on this device) and the loss at the last step; then the ratio of each to the seed, the fast recipe's last.

    python bench/train_throughput.py                  # a CUDA GPU: seed, fast, memory mode, every lever alone
    python bench/train_throughput.py --parity         # and the loss-parity check on real RAFT rows
    python bench/train_throughput.py --tiny           # a tiny model on the CPU (CI keeps the script working)
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import random
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_CONFIG = ROOT / "configs" / "mistral-7b-qlora-raft.yaml"
FAST_CONFIG = ROOT / "configs" / "mistral-7b-qlora-raft-fast.yaml"
MEMORY_CONFIG = ROOT / "configs" / "mistral-7b-qlora-raft-memory.yaml"

MISTRAL_7B_V03 = dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                      rope_theta=1_000_000.0, rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False)
TINY = dict(MISTRAL_7B_V03, vocab_size=1024, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)


# ------------------------------------------------------------------------------------------------------ recipes


def accept_new_sft_names() -> None:
    """The recipes say `sft.activation_checkpointing`, transformers >= 5.20's name; older ones (the GPU machine's
    5.17) call it gradient_checkpointing and the config check would refuse it. The bench only reads the value."""
    import raftune.config as config_module

    original = config_module._library_fields

    def fields():
        found = original()
        found["sft"] = found["sft"] | {"activation_checkpointing"}
        return found

    config_module._library_fields = fields


def recipes(tiny: bool) -> dict[str, list[str]]:
    """name -> [config file, overrides...]: the seed, the fast recipe, its memory mode, and each lever of the fast
    recipe switched on alone over the seed."""
    from raftune.config import load_config

    fast = load_config(FAST_CONFIG).fast
    out = {"seed": [str(SEED_CONFIG)]}
    for lever, value in dataclasses.asdict(fast).items():
        if value not in (None, False, 0):
            out[f"seed+{lever}"] = [str(SEED_CONFIG), f"fast.{lever}={json.dumps(value)}"]
    out["fast"] = [str(FAST_CONFIG)]
    out["memory"] = [str(MEMORY_CONFIG)]
    if tiny:  # the same recipes with CPU-sized batches; floats computed in fp32 (bf16 matmuls are slow on CPUs)
        scale = ["sft.bf16=false", "quantization.bnb_4bit_compute_dtype=float32"]
        out = {name: [*spec, *scale, *([f"fast.tokens_per_batch={_tiny_budget(spec)}"]
                                       if any("tokens_per_batch" in s for s in spec) or "fast" in spec[0]
                                       or "memory" in spec[0] else [])]
               for name, spec in out.items()}
    return out


def _tiny_budget(spec: list[str]) -> int:
    from raftune.config import load_config

    budget = load_config(spec[0], spec[1:]).fast.tokens_per_batch
    return max(128, budget // 32) if budget else 0


# ---------------------------------------------------------------------------------------------- model and data


def random_base(shape: dict, quantization: dict, device: str):
    """A MistralForCausalLM of the given shape with random weights, decoder linears quantised to NF4 by bitsandbytes
    as `from_pretrained(quantization_config=...)` would (the embeddings and lm_head stay unquantised, as there)."""
    import bitsandbytes as bnb
    import torch
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig, MistralConfig

    compute = getattr(torch, quantization.get("bnb_4bit_compute_dtype", "bfloat16"))
    with torch.device(device):
        model = AutoModelForCausalLM.from_config(MistralConfig(**shape), dtype=compute)
    for layer in model.model.layers:
        for parent in (layer.self_attn, layer.mlp):
            for name, linear in list(parent.named_children()):
                if not isinstance(linear, torch.nn.Linear):
                    continue
                q = bnb.nn.Linear4bit(linear.in_features, linear.out_features, bias=False, compute_dtype=compute,
                                      compress_statistics=quantization.get("bnb_4bit_use_double_quant", False),
                                      quant_type=quantization.get("bnb_4bit_quant_type", "fp4"), device="meta")
                q.weight = bnb.nn.Params4bit(linear.weight.data, requires_grad=False,
                                             compress_statistics=q.weight.compress_statistics,
                                             quant_type=q.weight.quant_type, module=q)._quantize(device)
                setattr(parent, name, q)
    model.is_loaded_in_4bit = True  # what transformers' bnb quantiser sets; peft picks its 4-bit LoRA layers by it
    model.config.quantization_config = BitsAndBytesConfig(**quantization)
    return model


def sequence_lengths(args, count: int) -> list[tuple[int, int]]:
    """(prompt, completion) token counts: drawn from a token report's rows, or 700-2048 with 20% completion."""
    rng = random.Random(args.seed)
    if args.lengths:
        report = json.loads(Path(args.lengths).read_text())["train"]
        rows = [(p, c) for p, c in zip(report["prompt_lengths"], report["completion_lengths"])
                if p + c <= report["max_length"]]
        return [rng.choice(rows) for _ in range(count)]
    low, high = args.min_len, args.max_len
    out = []
    for _ in range(count):
        n = rng.randint(low, high)
        out.append((n - n // 5, n // 5))
    return out


def random_examples(args, vocab: int, count: int) -> list[dict]:
    import torch

    generator = torch.Generator().manual_seed(args.seed)
    examples = []
    for prompt, completion in sequence_lengths(args, count):
        ids = torch.randint(3, vocab, (prompt + completion,), generator=generator).tolist()
        examples.append({"input_ids": ids, "completion_mask": [0] * prompt + [1] * completion})
    return examples


def plan_steps(config, examples: list[dict], seed: int = 0) -> list[list[list[int]]]:
    """Optimiser steps, each a list of micro-batches of example indices, as `raftune train` would form them: a fixed
    batch size (sft.per_device_train_batch_size) or raftune.fast's token-budget groups; gradient accumulation
    (sft.gradient_accumulation_steps) puts several micro-batches into one step."""
    from raftune.fast import group_by_budget

    lengths = [len(e["input_ids"]) for e in examples]
    if config.fast.tokens_per_batch:
        micro = group_by_budget(lengths, config.fast.tokens_per_batch, config.fast.packing, seed)
    else:
        order = list(range(len(examples)))
        random.Random(seed).shuffle(order)
        size = config.sft.get("per_device_train_batch_size", 8)
        micro = [order[i:i + size] for i in range(0, len(order), size)]
    accumulate = config.sft.get("gradient_accumulation_steps", 1)
    return [micro[i:i + accumulate] for i in range(0, len(micro) - accumulate + 1, accumulate)]


# ---------------------------------------------------------------------------------------------------- training


def make_optimizer(model, config, total_steps: int):
    """The recipe's optimiser and schedule, built by transformers.Trainer's own lookup of `sft.optim`."""
    import torch
    from transformers import Trainer, TrainingArguments, get_scheduler

    sft = config.sft
    optim = sft.get("optim", "adamw_torch")
    if not torch.cuda.is_available() and ("paged" in optim or "8bit" in optim):
        print(f"bench: {optim} needs CUDA; adamw_torch here")
        optim = "adamw_torch"
    args = TrainingArguments(output_dir="/tmp/raftune-bench", optim=optim, learning_rate=sft["learning_rate"],
                             weight_decay=sft.get("weight_decay", 0.0), report_to="none", use_cpu=False)
    cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    optimizer = cls([p for p in model.parameters() if p.requires_grad], **kwargs)
    scheduler = get_scheduler(sft.get("lr_scheduler_type", "linear"), optimizer,
                              num_warmup_steps=sft.get("warmup_steps", 0), num_training_steps=total_steps)
    return optimizer, scheduler


def train(model, config, examples, steps, collator, on_step, max_steps: int, total_steps: int | None = None):
    """Run optimiser steps; `on_step(step, loss, tokens)` after each (returns True to stop)."""
    import torch

    device = next(p for p in model.parameters() if p.requires_grad).device
    optimizer, scheduler = make_optimizer(model, config, total_steps or max_steps)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bool(config.sft.get("bf16")))
    model.train()
    trainable = [p for p in model.parameters() if p.requires_grad]
    for step, micro_batches in enumerate(steps[:max_steps]):
        batches = [collator([examples[i] for i in micro]) for micro in micro_batches]
        # Trainer (transformers >= 4.46) divides the summed loss by the label tokens of the whole step
        n_items = sum(int((b["labels"][..., 1:] != -100).sum()) for b in batches)
        real = sum(len(examples[i]["input_ids"]) for micro in micro_batches for i in micro)
        total = torch.zeros((), device=device)
        for batch in batches:
            batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
            with autocast:
                loss = model(**batch, num_items_in_batch=n_items).loss
            loss.backward()
            total += loss.detach()
        torch.nn.utils.clip_grad_norm_(trainable, config.sft.get("max_grad_norm", 1.0))
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        if on_step(step, total, real):
            break


def matmul_peak(device: str) -> float:
    """Dense matmul rate this device reaches (bf16 on CUDA, fp32 on CPU), FLOP/s: the MFU denominator."""
    import torch

    n, dtype = (8192, torch.bfloat16) if device == "cuda" else (1024, torch.float32)
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    for _ in range(3):
        a @ b
    _sync(device)
    reps, started = 10, time.perf_counter()
    for _ in range(reps):
        a @ b
    _sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - started)


def _sync(device) -> None:
    import torch

    if str(device).startswith("cuda"):
        torch.cuda.synchronize()


def model_flops(shape: dict, lora_params: int, lengths: list[int]) -> float:
    """LoRA training FLOPs of these real sequences: the frozen matmuls forward and input-gradient (4 per weight and
    token), the adapters forward and both gradients (6), causal attention forward and backward (6 L^2 H D per
    layer). Recomputation under checkpointing is not useful work and is not counted."""
    h, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    heads, kv, d = shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]
    frozen = layers * (h * heads * d * 2 + h * kv * d * 2 + 3 * h * f) + h * shape["vocab_size"]
    tokens = sum(lengths)
    return tokens * (4 * frozen + 6 * lora_params) + sum(6 * layers * heads * d * n * n for n in lengths)


def run_recipe(name: str, spec: list[str], args) -> dict:
    """One recipe: build, warm up, measure; the result row."""
    import torch
    from transformers import set_seed

    from raftune import fast
    from raftune.config import load_config
    from raftune.train import adapt_model

    config = load_config(spec[0], spec[1:])
    device = "cuda" if torch.cuda.is_available() else "cpu"
    shape = TINY if args.tiny else MISTRAL_7B_V03
    set_seed(0)
    model = adapt_model(random_base(shape, config.quantization, device), config)
    if device == "cuda":
        torch.cuda.empty_cache()  # the bf16 weights that were quantised stay out of the reserved peak
    lm = fast._decoder(model)
    fast.set_checkpointing(model, fast.checkpoint_layers(config, len(lm.model.layers)))  # as Trainer enables it
    lora_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    examples = random_examples(args, shape["vocab_size"], args.examples)
    steps = plan_steps(config, examples, args.seed)
    collator = fast.Collator(0, config.fast.packing, completion_only=True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    state = {"tokens": 0, "lengths": [], "started": None, "loss": None, "steps": 0, "padded": 0}

    def on_step(step, loss, real):
        if step + 1 == args.warmup:
            _sync(device)
            state["started"] = time.perf_counter()
        elif step + 1 > args.warmup:
            state["tokens"] += real
            state["lengths"] += [len(examples[i]["input_ids"]) for micro in steps[step] for i in micro]
            state["steps"] += 1
            # at least 3 timed steps; then stop at the token cap, or once enough time has passed (checking the time
            # would need a synchronisation, so the running clock is read without one and confirmed after)
            if state["steps"] >= 3 and (state["tokens"] >= args.measure_tokens
                                        or time.perf_counter() - state["started"] >= args.measure_seconds):
                state["loss"] = float(loss)  # synchronises: the clock stops after the last step's work
                return True
        return False

    train(model, config, examples, steps, collator, on_step, max_steps=len(steps))
    _sync(device)
    seconds = time.perf_counter() - state["started"]
    if state["loss"] is None:
        raise SystemExit(f"{name}: only {state['tokens']} tokens measured; raise --examples")
    row = {"recipe": name, "spec": spec, "tokens_per_s": state["tokens"] / seconds, "seconds": seconds,
           "tokens": state["tokens"], "steps": state["steps"], "tokens_per_step": state["tokens"] / state["steps"],
           "loss_last": state["loss"], "model_tflop": model_flops(shape, lora_params, state["lengths"]) / 1e12,
           "levers": dataclasses.asdict(config.fast),
           "device": torch.cuda.get_device_name() if device == "cuda" else "cpu"}
    if device == "cuda":
        row["peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
        row["reserved_gib"] = torch.cuda.max_memory_reserved() / 2**30
    if name in args.profile:
        row["profile"] = profile(model, config, examples, steps, collator)
    return row


def profile(model, config, examples, steps, collator) -> str:
    """The kernels of two steps by device time (for finding where the time goes)."""
    import torch
    from torch.profiler import ProfilerActivity, profile as torch_profile

    with torch_profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        train(model, config, examples, steps[-2:], collator, lambda *a: False, max_steps=2)
        torch.cuda.synchronize()
    return prof.key_averages().table(sort_by="cuda_time_total", row_limit=30, max_name_column_width=60)


# ------------------------------------------------------------------------------------------------------ parity


def parity_curves(config, steps: int = 50, tokens_per_step: int = 4096) -> dict:
    """Same learning: on the config's real RAFT rows (its data stage must have run), the seed's batching (2 padded
    rows a micro-batch, every layer checkpointed, gradient accumulation) and the fast recipe's levers (packed rows,
    Liger, fused LoRA, ...) train the same model from the same seed on the same examples in each optimiser step;
    the per-step losses are returned with their largest relative difference."""
    from transformers import set_seed

    from raftune import fast
    from raftune.config import FastConfig, load_config
    from raftune.models import load_tokenizer, resolve_base
    from raftune.sft_data import tokenize_rows
    from raftune.train import build_model, load_examples

    base = resolve_base(config)
    tokenizer = load_tokenizer(base)
    features, _ = tokenize_rows(load_examples(config)["train"], tokenizer, 2048, "raft")
    examples = [{"input_ids": f["input_ids"], "completion_mask": f["completion_mask"]} for f in features]
    lengths = [len(e["input_ids"]) for e in examples]
    groups, epoch = [], 0  # the same example groups for both, as many shuffled epochs as the steps need
    while len(groups) < steps:
        groups += fast.group_by_budget(lengths, tokens_per_step, True, seed=epoch)
        epoch += 1
    seed_batch = load_config(SEED_CONFIG).sft["per_device_train_batch_size"]
    recipes = {"seed": (dataclasses.replace(config, fast=FastConfig(),
                                            sft={**config.sft, "activation_checkpointing": True}), seed_batch),
               "fast": (dataclasses.replace(config, fast=load_config(FAST_CONFIG).fast,
                                            sft={**config.sft, "activation_checkpointing": True}), None)}
    curves = {}
    for name, (cfg, micro) in recipes.items():
        set_seed(0)
        model = build_model(base, cfg)
        fast.set_checkpointing(model, fast.checkpoint_layers(cfg, len(fast._decoder(model).model.layers)))
        plan = [[g[i:i + micro] for i in range(0, len(g), micro)] if micro else [g] for g in groups]
        losses = []
        train(model, cfg, examples, plan, fast.Collator(tokenizer.eos_token_id, cfg.fast.packing),
              lambda step, loss, real: losses.append(float(loss)) and False, max_steps=steps)
        curves[name] = losses
        del model
    worst = max(abs(f - s) / s for s, f in zip(curves["seed"], curves["fast"]))
    return {"steps": steps, "tokens_per_step": tokens_per_step, "rows": len(examples), "seed": curves["seed"],
            "fast": curves["fast"], "max_rel_diff": worst, "passed": worst <= 0.02}


def parity(args) -> dict:
    """parity_curves on the demo's RAFT rows (datasets/demo) and the tiny Mistral that raftune pre-trains on those
    documents (a random 7B would learn nothing visible in 50 steps); on CUDA with the 7B recipe's numerics."""
    import torch

    from raftune.config import load_config

    overrides = [f"runs_dir={args.parity_runs}", "sft.report_to=none"]
    if torch.cuda.is_available():
        overrides += ["sft.bf16=true", "quantization.bnb_4bit_compute_dtype=bfloat16",
                      f"sft.optim={load_config(SEED_CONFIG).sft.get('optim', 'adamw_torch')}"]
    config = load_config(ROOT / "configs" / "demo-tiny.yaml", overrides)
    if not (config.stage_dir("data") / "raft").is_dir():
        from raftune.data import stage as data_stage

        data_stage.run(config)
    return parity_curves(config, args.parity_steps, args.parity_tokens)


# --------------------------------------------------------------------------------------------------------- main


def versions() -> str:
    from importlib.metadata import PackageNotFoundError, version

    from raftune.fast import _varlen

    found = []
    for name in ("torch", "transformers", "peft", "bitsandbytes", "liger-kernel", "triton"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} absent")
    return ", ".join(found) + f"; torch varlen attention {'yes' if _varlen() else 'no'}"


def table(rows: list[dict], peak: float) -> str:
    seed = next((r for r in rows if r["recipe"] == "seed"), rows[0])
    lines = ["| recipe | real tokens/s | peak GiB | MFU | last loss | tokens/step | x seed |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        mfu = r["model_tflop"] * 1e12 / r["seconds"] / peak
        peak_mem = f"{r['peak_gib']:.1f}" if "peak_gib" in r else "-"
        lines.append(f"| {r['recipe']} | {r['tokens_per_s']:,.0f} | {peak_mem} | {mfu:.1%} | {r['loss_last']:.3f} | "
                     f"{r['tokens_per_step']:,.0f} | {r['tokens_per_s'] / seed['tokens_per_s']:.2f} |")
    return "\n".join(lines)


def _worker(name: str, extra: list[str] = ()):
    cmd = [sys.executable, __file__, *sys.argv[1:], *extra, "--worker", name]
    # variable-length batches fragment torch's caching allocator; expandable segments keep what it reserves near
    # what is allocated, for every recipe alike
    env = {"PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", **os.environ}
    return subprocess.run(cmd, capture_output=True, text=True, env=env)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and short sequences (CPU, under a minute)")
    parser.add_argument("--recipes", nargs="*", help="only these recipes (names as printed; none: only --parity)")
    parser.add_argument("--lengths", help="token_report.json of a `raftune train` run: its rows' lengths")
    parser.add_argument("--min-len", type=int)
    parser.add_argument("--max-len", type=int)
    parser.add_argument("--examples", type=int, default=600, help="synthetic examples drawn")
    parser.add_argument("--warmup", type=int, default=2, help="steps before the clock starts")
    parser.add_argument("--measure-tokens", type=int, help="at most this many real tokens timed per recipe")
    parser.add_argument("--measure-seconds", type=float, help="or until this many seconds have been timed")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--parity", action="store_true", help="also the loss-parity check (tiny model, RAFT rows)")
    parser.add_argument("--parity-steps", type=int, default=50)
    parser.add_argument("--parity-tokens", type=int, default=4096, help="real tokens per optimiser step in parity")
    parser.add_argument("--parity-runs", default=str(ROOT / ".bench-cache" / "runs"))
    parser.add_argument("--profile", nargs="*", default=[], help="print the kernel profile of these recipes")
    parser.add_argument("--extra", nargs="*", default=[],
                        help="more recipes, NAME=RECIPE:key=value,key=value (e.g. big=fast:fast.tokens_per_batch=32768)")
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/bench"), help="folder for results.json")
    parser.add_argument("--no-warm-up", action="store_true", help="skip the discarded first run (CUDA)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.min_len = args.min_len or (35 if args.tiny else 700)
    args.max_len = args.max_len or (102 if args.tiny else 2048)
    args.measure_tokens = args.measure_tokens or (1000 if args.tiny else 200_000)
    args.measure_seconds = args.measure_seconds or (1 if args.tiny else 25)
    if args.tiny:
        args.examples, args.warmup = min(args.examples, 200), 1
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    accept_new_sft_names()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    all_recipes = recipes(args.tiny)
    for extra in args.extra:
        name, _, rest = extra.partition("=")
        base, _, overrides = rest.partition(":")
        all_recipes[name] = [*all_recipes[base], *filter(None, overrides.split(","))]
    if args.worker:  # one recipe in this process, its row as JSON on the last line
        print("ROW " + json.dumps(run_recipe(args.worker, all_recipes[args.worker], args)), flush=True)
        return
    device = "cuda" if torch.cuda.is_available() else "cpu"
    peak = matmul_peak(device)
    print(f"bench: {torch.cuda.get_device_name() if device == 'cuda' else 'cpu'}, dense matmul "
          f"{peak / 1e12:.0f} TFLOP/s measured; {versions()}", flush=True)
    rows = []
    names = list(all_recipes) if args.recipes is None else args.recipes
    if device == "cuda" and names and not args.no_warm_up:
        # Whichever recipe runs first on a fresh machine pays for cold library pages and kernel caches: the seed
        # measured 1,363 tokens/s first and 2,496 second in one invocation on one H100. A discarded run first.
        print("bench: warm-up run of the first recipe (discarded)", flush=True)
        _worker(names[0], ["--measure-seconds", "1"])
    for name in names:
        started = time.time()
        if device == "cuda":  # a process per recipe: global kernel patches and peak memory stay its own
            proc = _worker(name)
            found = [line[4:] for line in proc.stdout.splitlines() if line.startswith("ROW ")]
            if not found:
                print(f"bench: {name} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}", flush=True)
                continue
            row = json.loads(found[-1])
        else:
            row = run_recipe(name, all_recipes[name], args)
        rows.append(row)
        if "profile" in row:
            print(row.pop("profile"))
        print(f"bench: {name}: {row['tokens_per_s']:,.0f} tokens/s, peak {row.get('peak_gib', 0):.1f} GiB, "
              f"{time.time() - started:.0f} s wall", flush=True)
        (out / "results.json").write_text(json.dumps({"peak_flops": peak, "rows": rows}, indent=1))
    result = {"peak_flops": peak, "rows": rows}
    if args.parity:
        try:
            p = result["parity"] = parity(args)
            print(f"parity: {p['steps']} steps of {p['tokens_per_step']} tokens on {p['rows']} RAFT rows, seed "
                  f"{p['seed'][0]:.3f} -> {p['seed'][-1]:.3f}, fast {p['fast'][0]:.3f} -> {p['fast'][-1]:.3f}, "
                  f"largest difference {p['max_rel_diff']:.2%}: {'PASS' if p['passed'] else 'FAIL'} (limit 2%)")
        except Exception as err:  # the throughput rows are measured already; report them all the same
            import traceback

            traceback.print_exc()
            result["parity"] = {"error": f"{type(err).__name__}: {err}"}
    (out / "results.json").write_text(json.dumps(result, indent=1))
    text = table(rows, peak) if rows else ""
    (out / "table.md").write_text(text + "\n")
    print(text)
    by = {r["recipe"]: r for r in rows}
    for name in ("memory", "fast"):  # the fast recipe's ratio last
        if name in by and "seed" in by:
            print(f"{name} / seed real tokens/s: {by[name]['tokens_per_s'] / by['seed']['tokens_per_s']:.2f}x")


if __name__ == "__main__":
    main()
