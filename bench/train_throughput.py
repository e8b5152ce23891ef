"""GPU training throughput through `raftune train`'s code path: the seed's QLoRA recipe, raftune's fast recipe, its
memory mode and each lever; Unsloth side by side; DDP and FSDP-QLoRA on several GPUs.

The model is shaped like Mistral-7B-v0.3 (32 layers, 4096 wide, GQA 32/8 heads, 14336 MLP, 32768 vocabulary) with
random weights, written once as a bf16 checkpoint folder and loaded by `raftune train`'s loader, which quantises it
to NF4 as it would a downloaded base: the time and memory of a training step depend on the shapes, the number formats
and the kernels, not on the weight values, so no 14 GB download is needed. The training sequences are random token
ids whose lengths follow a built RAFT dataset's (`--lengths runs/<run>/train/token_report.json`) or, by default,
700-2048 tokens with the last 20% as the completion.

Every recipe is a config file trained by `raftune.train.make_trainer`, the Trainer (or trl SFTTrainer) that
`raftune train` builds, with its collator, batches and callbacks; the bench only fixes the number of steps (warm-up,
then timed), turns evaluation and checkpoints off and logs the loss every step. On CUDA each run is its own process
(Liger patches modules globally; peak memory is per process); one-GPU runs go side by side, one per GPU.

Printed for each: real (non-padding) tokens/s, peak GPU memory (torch's max allocated; reserved in the JSON), model
FLOP utilisation (LoRA training FLOPs of the real tokens, no recomputation counted, over the bf16 matmul rate measured
on this device) and the loss at the last step; the ratio of each to the seed, and to the peer's best.

    python bench/train_throughput.py                  # a CUDA GPU: seed, fast, memory mode, every lever alone
    python bench/train_throughput.py --peer unsloth   # and Unsloth's QLoRA at its best settings (bench/unsloth_peer.py)
    python bench/train_throughput.py --launcher accelerate --processes 2   # one GPU against DDP and FSDP-QLoRA
    python bench/train_throughput.py --parity         # and the loss-parity check on real RAFT rows
    python bench/train_throughput.py --tiny           # a tiny model on the CPU (CI keeps the script working)
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SEED_CONFIG = ROOT / "configs" / "mistral-7b-qlora-raft.yaml"
FAST_CONFIG = ROOT / "configs" / "mistral-7b-qlora-raft-fast.yaml"
MEMORY_CONFIG = ROOT / "configs" / "mistral-7b-qlora-raft-memory.yaml"
LOWMEM_CONFIG = ROOT / "configs" / "mistral-7b-qlora-raft-lowmem.yaml"
AUTO_CONFIG = ROOT / "configs" / "mistral-7b-qlora-raft-auto.yaml"

MISTRAL_7B_V03 = dict(vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                      num_attention_heads=32, num_key_value_heads=8, head_dim=128, max_position_embeddings=32768,
                      rope_theta=1_000_000.0, rms_norm_eps=1e-5, sliding_window=None, tie_word_embeddings=False)
TINY = dict(MISTRAL_7B_V03, vocab_size=1024, hidden_size=64, intermediate_size=160, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16)


# ------------------------------------------------------------------------------------------------------ recipes


def recipes(tiny: bool) -> dict[str, list[str]]:
    """name -> [config file, overrides...]: the seed, the fast recipe, its memory and low-memory modes, and each
    lever of the fast recipe switched on alone over the seed."""
    from raftune.config import load_config

    fast = load_config(FAST_CONFIG).fast
    out = {"seed": [str(SEED_CONFIG)]}
    for lever, value in dataclasses.asdict(fast).items():
        if value not in (None, False, 0):
            out[f"seed+{lever}"] = [str(SEED_CONFIG), f"fast.{lever}={json.dumps(value)}"]
    out["fast"] = [str(FAST_CONFIG)]
    out["memory"] = [str(MEMORY_CONFIG)]
    out["lowmem"] = [str(LOWMEM_CONFIG)]
    out["auto"] = [str(AUTO_CONFIG)]  # raftune.memory_budget's pick for this GPU (what `raftune train` does)
    if tiny:  # the same recipes with CPU-sized batches; floats computed in fp32 (bf16 matmuls are slow on CPUs)
        scale = ["sft.bf16=false", "quantization.bnb_4bit_compute_dtype=float32"]
        out = {name: [*spec, *scale, *([f"fast.tokens_per_batch={_tiny_budget(spec)}"] if _tiny_budget(spec) else [])]
               for name, spec in out.items()}
    return out


def with_variants(recipes: dict[str, list[str]], extras: list[str]) -> None:
    """Add each `NAME=RECIPE:key=value,key=value` of `extras` to `recipes`: RECIPE's spec with those overrides."""
    for extra in extras:
        name, _, rest = extra.partition("=")
        base, _, overrides = rest.partition(":")
        recipes[name] = [*recipes[base], *filter(None, overrides.split(","))]


def _tiny_budget(spec: list[str]) -> int:
    from raftune.config import load_config

    budget = load_config(spec[0], spec[1:]).fast.tokens_per_batch
    return max(128, budget // 32) if budget else 0


# ---------------------------------------------------------------------------------------------- model and data


def random_base(shape: dict, folder: Path) -> Path:
    """A checkpoint folder of a MistralForCausalLM of this shape with random bf16 weights and a tokenizer with one
    token per id, made once. `raftune train` loads it like any downloaded base (quantised to NF4 as it loads), so
    the bench times the same loading, adapter and Trainer as a real run; a step's time and memory depend on the
    shapes, formats and kernels, not on the weight values, so no 14 GB download is needed."""
    import torch
    from tokenizers import Tokenizer
    from tokenizers.models import WordLevel
    from transformers import AutoModelForCausalLM, MistralConfig, PreTrainedTokenizerFast, set_seed

    if (folder / "config.json").is_file() and (folder / "tokenizer.json").is_file():
        return folder
    set_seed(0)
    with torch.device("cuda" if torch.cuda.is_available() else "cpu"):
        model = AutoModelForCausalLM.from_config(MistralConfig(**shape), dtype=torch.bfloat16)
    model.save_pretrained(str(folder))
    del model
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, **{f"t{i}": i for i in range(3, shape["vocab_size"])}}
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=Tokenizer(WordLevel(vocab, unk_token="<unk>")),
                                        unk_token="<unk>", bos_token="<s>", eos_token="</s>", pad_token="</s>")
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    tokenizer.save_pretrained(str(folder))
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    return folder


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


def model_flops(shape: dict, lora_params: int, tokens: int, squares: int) -> float:
    """LoRA training FLOPs of these real tokens: the frozen matmuls forward and input-gradient (4 per weight and
    token), the adapters forward and both gradients (6), causal attention forward and backward (6 L^2 H D per layer
    and sequence; `squares` is the sum of L^2). Recomputation under checkpointing is not useful work, not counted."""
    h, f, layers = shape["hidden_size"], shape["intermediate_size"], shape["num_hidden_layers"]
    heads, kv, d = shape["num_attention_heads"], shape["num_key_value_heads"], shape["head_dim"]
    frozen = layers * (h * heads * d * 2 + h * kv * d * 2 + 3 * h * f) + h * shape["vocab_size"]
    return tokens * (4 * frozen + 6 * lora_params) + 6 * layers * heads * d * squares


class StepClock:
    """Times the optimiser steps after the warm-up ones and counts the real tokens the model sees, from a forward
    pre-hook (attention-mask sum of a padded batch, every token of a packed one; sequence lengths from the mask or
    `cu_seq_lens_q`). Counters stay on the device: the clock synchronises only where it starts and stops. Works as
    a transformers TrainerCallback (built by `make()` so this module imports nothing heavy)."""

    @staticmethod
    def make(warmup: int, steps: int, device):
        import torch
        from transformers import TrainerCallback

        class Clock(TrainerCallback):
            def __init__(self):
                self.count = torch.zeros(2, dtype=torch.int64, device=device)  # tokens, sum of squared lengths
                self.marks, self.losses = {}, []

            def hook(self, module, args, kwargs):
                ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
                cu = kwargs.get("cu_seq_lens_q")
                if ids is None:
                    return
                if mask is not None:
                    lengths = mask.sum(-1)
                elif cu is not None:
                    lengths = (cu[1:] - cu[:-1]).to(self.count.device)
                else:
                    lengths = torch.full((ids.shape[0],), ids.shape[-1], device=self.count.device)
                lengths = lengths.to(self.count.device, torch.int64)
                self.count += torch.stack([lengths.sum(), (lengths * lengths).sum()])

            def on_step_end(self, args, state, control, **kwargs):
                if state.global_step in (warmup, warmup + steps):
                    _sync(device)
                    self.marks[state.global_step] = (time.perf_counter(), self.count.clone())

            def on_log(self, args, state, control, logs=None, **kwargs):
                if logs and "loss" in logs:
                    self.losses.append([state.global_step, float(logs["loss"])])

        return Clock()


def profile_callback(path: Path, step: int):
    """A TrainerCallback that profiles optimiser step `step` (one more step after the timed ones, so the profiler's
    overhead never reaches the measured rate) and writes the operators by their own GPU time to `path`."""
    import torch
    from transformers import TrainerCallback

    class Profile(TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            if state.global_step == step:
                activities = [torch.profiler.ProfilerActivity.CPU, torch.profiler.ProfilerActivity.CUDA]
                self.profiler = torch.profiler.profile(activities=activities)
                self.profiler.__enter__()
                self.started = time.perf_counter()

        def on_step_end(self, args, state, control, **kwargs):
            if state.global_step == step + 1 and hasattr(self, "profiler"):
                torch.cuda.synchronize()
                wall = time.perf_counter() - self.started
                self.profiler.__exit__(None, None, None)
                table = self.profiler.key_averages().table(sort_by="self_cuda_time_total", row_limit=40)
                path.write_text(f"one optimiser step, {wall:.3f} s wall under the profiler\n{table}\n")

    return Profile()


def measure_overrides(args) -> list[str]:
    """What the bench changes in a recipe: a fixed number of steps, no evaluation, checkpoints or reports, a loss
    logged every step (for comparing runs); CPU runs use plain AdamW (8-bit AdamW needs CUDA)."""
    import torch

    out = [f"sft.max_steps={args.warmup + args.steps + bool(args.profile)}", "sft.eval_strategy=no", "sft.save_strategy=no",
           "sft.report_to=none", "sft.logging_steps=1", "sft.disable_tqdm=true"]
    if not torch.cuda.is_available():
        out.append("sft.optim=adamw_torch")
    return out


def run_recipe(name: str, spec: list[str], args) -> dict | None:
    """One recipe through `raftune.train.make_trainer`, the Trainer that `raftune train` builds (model loading and
    quantisation, LoRA, the fast levers, its collator and batches), trained for warm-up + measured steps. In a
    process of `accelerate launch` the numbers are gathered from every process; only the first returns the row."""
    import torch
    from datasets import Dataset
    from transformers import AutoTokenizer

    from raftune import fast
    from raftune.config import load_config
    from raftune.train import make_trainer

    config = load_config(spec[0], [*spec[1:], *measure_overrides(args)])
    shape = TINY if args.tiny else MISTRAL_7B_V03
    tokenizer = AutoTokenizer.from_pretrained(args.base)
    train_set = Dataset.from_list(random_examples(args, shape["vocab_size"], args.examples))
    local = int(os.environ.get("LOCAL_RANK", 0))
    device = torch.device("cuda", local) if torch.cuda.is_available() else torch.device("cpu")
    clock = StepClock.make(args.warmup, args.steps, device)
    out_dir = Path(tempfile.mkdtemp(prefix=f"raftune-bench-{name}-"))  # Trainer's output_dir; nothing is saved
    callbacks = [clock]
    if args.profile and device.type == "cuda":
        callbacks.append(profile_callback(Path(args.out) / f"profile-{name}.txt", args.warmup + args.steps))
    trainer = make_trainer(config, args.base, tokenizer, train_set, None, out_dir, callbacks)
    fast._decoder(trainer.model).register_forward_pre_hook(clock.hook, with_kwargs=True)
    lora_params = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, c0), (t1, c1) = clock.marks[args.warmup], clock.marks[args.warmup + args.steps]
    counted = (c1 - c0)
    peaks = [torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else 0.0]
    reserved = [torch.cuda.max_memory_reserved(device) / 2**30 if device.type == "cuda" else 0.0]
    world = trainer.args.world_size
    if world > 1:  # every process's tokens, and each one's peak
        import torch.distributed as dist

        dist.all_reduce(counted)
        gathered = [None] * world
        dist.all_gather_object(gathered, (peaks[0], reserved[0]))
        peaks, reserved = [g[0] for g in gathered], [g[1] for g in gathered]
    if not trainer.is_world_process_zero():
        return None
    tokens, squares = (int(v) for v in counted.tolist())
    seconds = t1 - t0
    return {"recipe": name, "spec": spec, "processes": world, "tokens_per_s": tokens / seconds,
            "tokens_per_s_per_gpu": tokens / seconds / world, "seconds": seconds, "tokens": tokens,
            "steps": args.steps, "tokens_per_step": tokens / args.steps, "losses": clock.losses,
            "loss_last": clock.losses[-1][1] if clock.losses else float("nan"),
            "model_tflop": model_flops(shape, lora_params, tokens, squares) / 1e12,
            "peak_gib": max(peaks), "peak_gib_per_gpu": peaks, "reserved_gib_per_gpu": reserved,
            "levers": dataclasses.asdict(config.fast),
            "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"}


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
              lambda step, loss, real, losses=losses: losses.append(float(loss)) and False, max_steps=steps)
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

    found = []
    for name in ("torch", "transformers", "peft", "trl", "accelerate", "bitsandbytes", "liger-kernel", "triton"):
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} absent")
    return ", ".join(found)


def _mfu(row: dict, peak: float) -> str:
    return f"{row['model_tflop'] * 1e12 / row['seconds'] / peak / row.get('processes', 1):.1%}"


def table(rows: list[dict], peak: float) -> str:
    seed = next((r for r in rows if r["recipe"] == "seed"), rows[0])
    lines = ["| recipe | real tokens/s | peak GiB | MFU | last loss | tokens/step | x seed |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for r in rows:
        lines.append(f"| {r['recipe']} | {r['tokens_per_s']:,.0f} | {r['peak_gib']:.1f} | {_mfu(r, peak)} | "
                     f"{r['loss_last']:.3f} | {r['tokens_per_step']:,.0f} | {r['tokens_per_s'] / seed['tokens_per_s']:.2f} |")
    return "\n".join(lines)


def loss_difference(a: dict, b: dict) -> float:
    """Largest relative difference of two runs' losses at the steps both logged."""
    other = dict(map(tuple, b["losses"]))
    diffs = [abs(other[s] - loss) / loss for s, loss in a["losses"] if s in other]
    return max(diffs) if diffs else float("nan")


def launcher_table(rows: list[dict], processes: int, peak: float) -> str:
    """Per recipe: one GPU at the same global batch, then each launcher on `processes` GPUs."""
    lines = ["| recipe | launcher | GPUs | real tokens/s | per GPU | peak GiB per GPU | scaling efficiency | MFU | "
             "loss vs 1 GPU |", "| --- | --- | ---: | ---: | ---: | --- | ---: | ---: | ---: |"]
    singles = {r["recipe"]: r for r in rows if r["launcher"] == "1 GPU"}
    for r in rows:
        one = singles.get(r["recipe"])
        eff = f"{r['tokens_per_s'] / (r['processes'] * one['tokens_per_s']):.1%}" if one and r is not one else "-"
        diff = f"{loss_difference(one, r):.2%}" if one and r is not one else "-"
        peaks = " / ".join(f"{p:.1f}" for p in r["peak_gib_per_gpu"])
        lines.append(f"| {r['recipe']} | {r['launcher']} | {r['processes']} | {r['tokens_per_s']:,.0f} | "
                     f"{r['tokens_per_s_per_gpu']:,.0f} | {peaks} | {eff} | {_mfu(r, peak)} | {diff} |")
    return "\n".join(lines)


def peer_table(rows: list[dict], ours: dict[str, dict]) -> str:
    lines = ["| run | real tokens/s | peak GiB |", "| --- | ---: | ---: |"]
    for r in [*ours.values(), *rows]:
        lines.append(f"| {r['recipe']} | {r['tokens_per_s']:,.0f} | {r['peak_gib']:.1f} |")
    return "\n".join(lines)


def peer_ratios(ours: dict[str, dict], peers: list[dict]) -> list[str]:
    """Each recipe against the peer row it has to beat: the fast recipe against the peer's fastest, the memory
    modes against the peer's settings of about their memory (its padding-free batch 8, its padded batch 2)."""
    settings = {"best": max(peers, key=lambda r: r["tokens_per_s"])}
    settings.update({key: r for r in peers for key in ("padding free 8", "padded 2") if r["recipe"].endswith(key)})
    lines = []
    for name, key in (("fast", "best"), ("memory", "padding free 8"), ("lowmem", "padded 2"), ("seed", "best")):
        if name in ours and key in settings:
            mine, theirs = ours[name], settings[key]
            lines.append(f"{name} / {theirs['recipe']}: {mine['tokens_per_s'] / theirs['tokens_per_s']:.2f}x real "
                         f"tokens/s, peak {mine['peak_gib']:.1f} against {theirs['peak_gib']:.1f} GiB")
    return lines


WORKER_ENV = {
    # variable-length batches fragment torch's caching allocator; expandable segments keep what it reserves near
    # what is allocated, for every recipe alike
    "PYTORCH_CUDA_ALLOC_CONF": "expandable_segments:True", "PYTHONUNBUFFERED": "1",
    # NVLink multicast stays off in NCCL, PyTorch and NVSHMEM on shared multi-GPU hosts
    "NCCL_NVLS_ENABLE": "0", "TORCH_SYMM_MEM_DISABLE_MULTICAST": "1", "NVSHMEM_DISABLE_NVLS": "1"}


@dataclasses.dataclass
class Job:
    label: str
    cmd: list[str]
    gpus: int  # 1: may run beside other one-GPU jobs; more: alone
    env: dict = dataclasses.field(default_factory=dict)
    row: dict | None = None


def run_jobs(jobs: list[Job], n_gpus: int, logs: Path, timeout: float) -> None:
    """Each job in its own process (Liger patches modules globally; peak memory is per process). One-GPU jobs run
    side by side, one per GPU; a several-GPU job runs alone. A job's row is the last `ROW ` line it prints."""
    logs.mkdir(parents=True, exist_ok=True)
    queue = list(jobs)
    while queue:
        batch = [queue.pop(0)]
        while batch[0].gpus == 1 and queue and queue[0].gpus == 1 and len(batch) < max(1, n_gpus):
            batch.append(queue.pop(0))
        started, procs = time.time(), []
        for slot, job in enumerate(batch):
            env = {**os.environ, **WORKER_ENV, **job.env}
            if job.gpus == 1 and n_gpus > 1:
                env["CUDA_VISIBLE_DEVICES"] = str(slot)
            handle = (logs / f"{job.label.replace(' ', '_')}.log").open("w")
            procs.append((job, handle, subprocess.Popen(job.cmd, stdout=handle, stderr=subprocess.STDOUT, env=env,
                                                        text=True)))
        for job, handle, proc in procs:
            try:
                proc.wait(timeout=max(1.0, timeout - (time.time() - started)))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            handle.close()
            text = (logs / f"{job.label.replace(' ', '_')}.log").read_text(errors="replace")
            found = [line[4:] for line in text.splitlines() if line.startswith("ROW ")]
            if found:
                job.row = json.loads(found[-1])
                with (logs / "rows.jsonl").open("a") as rows:  # kept if the invocation is cut short
                    rows.write(json.dumps({"label": job.label, **job.row}) + "\n")
                print(f"bench: {job.label}: {job.row['tokens_per_s']:,.0f} tokens/s, peak "
                      f"{job.row['peak_gib']:.1f} GiB, {time.time() - started:.0f} s wall", flush=True)
            else:
                print(f"bench: {job.label} failed (exit {proc.returncode}):\n{text[-4000:]}", flush=True)


def worker_cmd(args, name: str) -> list[str]:
    return [sys.executable, __file__, *sys.argv[1:], "--base", str(args.base), "--worker", name]


def accelerate_cmd(args, config_file: Path, name: str, port: int, extra: list[str] = ()) -> list[str]:
    return [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(config_file), "--num_processes",
            str(args.processes), "--main_process_port", str(port), __file__, *sys.argv[1:], "--base", str(args.base),
            *extra, "--worker", name]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiny", action="store_true", help="a tiny model and short sequences (CPU, under a minute)")
    parser.add_argument("--recipes", nargs="*", help="only these recipes (names as printed; none: only --parity)")
    parser.add_argument("--launcher", choices=["accelerate"], help="also run the recipes under accelerate launch")
    parser.add_argument("--processes", type=int, default=2, help="processes (GPUs) for --launcher")
    parser.add_argument("--peer", choices=["unsloth"], help="also Unsloth's QLoRA on the same shape and sequences")
    parser.add_argument("--peer-pythonpath", default=os.environ.get("RAFTUNE_PEER_PYTHONPATH", ""),
                        help="PYTHONPATH of the peer's own packages (Unsloth pins other trl and datasets versions)")
    parser.add_argument("--lengths", help="token_report.json of a `raftune train` run: its rows' lengths")
    parser.add_argument("--min-len", type=int)
    parser.add_argument("--max-len", type=int)
    parser.add_argument("--examples", type=int, default=600, help="synthetic examples drawn")
    parser.add_argument("--warmup", type=int, default=2, help="optimiser steps before the clock starts")
    parser.add_argument("--steps", type=int, default=6, help="optimiser steps timed after the warm-up")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true",
                        help="profile one more step per recipe after the timed ones: <out>/profile-<recipe>.txt")
    parser.add_argument("--parity", action="store_true", help="also the loss-parity check (tiny model, RAFT rows)")
    parser.add_argument("--parity-steps", type=int, default=50)
    parser.add_argument("--parity-tokens", type=int, default=4096, help="real tokens per optimiser step in parity")
    parser.add_argument("--parity-runs", default=str(ROOT / ".bench-cache" / "runs"))
    parser.add_argument("--extra", nargs="*", default=[],
                        help="more recipes, NAME=RECIPE:key=value,key=value (e.g. big=fast:fast.tokens_per_batch=65536)")
    parser.add_argument("--base", help="the random-weight checkpoint folder (made once; default under .bench-cache)")
    parser.add_argument("--timeout", type=float, default=420, help="seconds a worker process may run")
    parser.add_argument("--out", default=os.environ.get("OUT", "runs/bench"), help="folder for results.json")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.min_len = args.min_len or (35 if args.tiny else 700)
    args.max_len = args.max_len or (102 if args.tiny else 2048)
    if args.tiny:
        args.examples, args.warmup, args.steps = min(args.examples, 200), 1, min(args.steps, 2)
    sys.path.insert(0, str(ROOT / "src"))
    import torch

    all_recipes = recipes(args.tiny)
    with_variants(all_recipes, args.extra)
    if args.worker:  # one recipe in this process (one of several under accelerate launch); NAME@K: K-step accumulation
        name, _, accumulate = args.worker.partition("@")
        spec = all_recipes[name] + ([f"sft.gradient_accumulation_steps={accumulate}"] if accumulate else [])
        row = run_recipe(name, spec, args)
        if row is not None:
            print("ROW " + json.dumps(row), flush=True)
        return

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    cuda = torch.cuda.is_available()
    peak = matmul_peak("cuda" if cuda else "cpu")
    print(f"bench: {torch.cuda.get_device_name() if cuda else 'cpu'} x {torch.cuda.device_count() if cuda else 1}, "
          f"dense matmul {peak / 1e12:.0f} TFLOP/s measured; {versions()}", flush=True)
    shape = TINY if args.tiny else MISTRAL_7B_V03
    args.base = str(random_base(shape, Path(args.base or ROOT / ".bench-cache" / ("tiny" if args.tiny else "mistral-7b-shape"))))
    result: dict = {"peak_flops": peak, "versions": versions(), "argv": sys.argv[1:]}
    n_gpus = torch.cuda.device_count() if cuda else 1
    logs = Path(os.environ.get("RAFTUNE_BENCH_LOGS", "/tmp/raftune-bench-logs"))

    if args.launcher:  # one GPU at the same global batch (gradient accumulation), then each launcher
        names = args.recipes or ["seed", "fast"]
        launchers = ({"ddp": "ddp.yaml", "fsdp": "fsdp_qlora.yaml"} if cuda else {"ddp": "ddp-cpu.yaml"})
        # on CPUs the processes join over gloo (sft.use_cpu), as in tests/test_distributed.py
        cpu = [] if cuda else ["--extra", *[f"{n}-cpu={n}:sft.use_cpu=true" for n in names]]
        jobs = [Job(f"{n} 1 GPU", worker_cmd(args, f"{n}@{args.processes}"), 1) for n in names]
        for i, (launcher, file) in enumerate(launchers.items()):
            jobs += [Job(f"{n} {launcher}", accelerate_cmd(args, ROOT / "configs" / "accelerate" / file,
                                                           n if cuda else f"{n}-cpu", 29500 + 10 * i + j, cpu),
                         args.processes) for j, n in enumerate(names)]
        run_jobs(jobs, n_gpus, logs, args.timeout)
        rows = []
        for job in jobs:
            if job.row:
                job.row["launcher"] = "1 GPU" if job.gpus == 1 else job.label.split()[-1]
                job.row["recipe"] = job.label.split()[0]
                rows.append(job.row)
        result["launcher_rows"] = rows
        text = launcher_table(rows, args.processes, peak) if rows else "no rows"
        (out / "results.json").write_text(json.dumps(result, indent=1))
        (out / "launcher_table.md").write_text(text + "\n")
        print(text)
        return

    names = list(all_recipes) if args.recipes is None else args.recipes
    if cuda:
        jobs = [Job(name, worker_cmd(args, name), 1) for name in names]
        if args.peer:  # each peer row beside one of ours, on the other GPU
            peers = peer_jobs(args)
            jobs = [j for pair in itertools.zip_longest(jobs, peers) for j in pair if j]
        run_jobs(jobs, n_gpus, logs, args.timeout)
        rows = [job.row for job in jobs if job.row and job.label in names]
        peers = [job.row for job in jobs if job.row and job.label not in names]
    else:
        rows = [run_recipe(name, all_recipes[name], args) for name in names]
        peers = []
        if args.peer:
            print(f"bench: peer {args.peer} skipped: it needs a CUDA GPU")
    result["rows"], result["peer_rows"] = rows, peers
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
    by = {r["recipe"]: r for r in rows}
    if peers:
        text += "\n\n" + peer_table(peers, {n: by[n] for n in ("fast", "memory", "lowmem", "seed") if n in by})
        text += "".join(f"\n{line}" for line in peer_ratios(by, peers))
    (out / "table.md").write_text(text + "\n")
    print(text)
    for name in ("memory", "fast"):  # the fast recipe's ratio last
        if name in by and "seed" in by:
            print(f"{name} / seed real tokens/s: {by[name]['tokens_per_s'] / by['seed']['tokens_per_s']:.2f}x")


def peer_jobs(args) -> list[Job]:
    """Unsloth's QLoRA at its best settings, each in its own process with the peer's own packages."""
    script = Path(__file__).with_name("unsloth_peer.py")
    env = {"PYTHONPATH": args.peer_pythonpath} if args.peer_pythonpath else {}
    common = ["--base", str(args.base), "--examples", str(args.examples), "--warmup", str(args.warmup),
              "--steps", str(args.steps), "--seed", str(args.seed), "--min-len", str(args.min_len),
              "--max-len", str(args.max_len), *(["--lengths", args.lengths] if args.lengths else [])]
    return [Job(f"unsloth {setting}", [sys.executable, str(script), *common, "--setting", setting], 1, env)
            for setting in ("padding-free-8", "padding-free-16", "padded-2")]


if __name__ == "__main__":
    main()
