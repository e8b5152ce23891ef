"""The peer in bench/train_throughput.py --peer unsloth: Unsloth's QLoRA on the same random-weight checkpoint and the
same random sequences, timed the same way (optimiser steps after a warm-up, real tokens counted at the model's input).

Unsloth's own recipe at its best settings: its loader (NF4, bf16), LoRA r=32/alpha 64 on the seven projections with
dropout 0 (its fused LoRA kernels need that), its offloaded gradient checkpointing ("unsloth"), 8-bit AdamW, and
trl's SFTTrainer (completion-only loss) with padding-free batches of 8 or 16 rows, or padded batches of 2.

It runs in its own process with its own packages (Unsloth pins trl <= 1.15 and datasets < 5): PYTHONPATH names them.
It prints one `ROW {json}` line, as the bench's workers do.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

SETTINGS = {"padding-free-8": (8, True), "padding-free-16": (16, True), "padded-2": (2, False)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--base", required=True)
    parser.add_argument("--setting", choices=SETTINGS, required=True)
    parser.add_argument("--examples", type=int, default=600)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--min-len", type=int, default=700)
    parser.add_argument("--max-len", type=int, default=2048)
    parser.add_argument("--lengths")
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the checkpoint is local; never wait for a hub
    try:
        import unsloth  # noqa: F401  (first: it patches transformers, peft and trl)
        from unsloth import FastLanguageModel
    except Exception as err:
        print(f"unsloth_peer: unsloth not importable here ({type(err).__name__}: {str(err)[:200]})")
        sys.exit(3)
    import torch
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    sys.path.insert(0, str(Path(__file__).parent))
    import train_throughput as bench  # the same sequences and the same clock

    batch, padding_free = SETTINGS[args.setting]
    model, tokenizer = FastLanguageModel.from_pretrained(args.base, max_seq_length=args.max_len,
                                                         dtype=torch.bfloat16, load_in_4bit=True)
    model = FastLanguageModel.get_peft_model(
        model, r=32, lora_alpha=64, lora_dropout=0, bias="none", use_gradient_checkpointing="unsloth",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"], random_state=0)
    vocab = model.config.vocab_size
    train_set = Dataset.from_list(bench.random_examples(args, vocab, args.examples))
    device = torch.device("cuda")
    clock = bench.StepClock.make(args.warmup, args.steps, device)
    config = SFTConfig(output_dir="/tmp/unsloth-peer", per_device_train_batch_size=batch,
                       gradient_accumulation_steps=1, max_steps=args.warmup + args.steps, learning_rate=2.5e-5,
                       warmup_steps=2, optim="adamw_8bit", bf16=True, logging_steps=1, report_to="none",
                       save_strategy="no", max_length=args.max_len, padding_free=padding_free,
                       completion_only_loss=True, seed=0, dataset_num_proc=1)
    trainer = SFTTrainer(model=model, args=config, train_dataset=train_set, processing_class=tokenizer,
                         callbacks=[clock])
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner.register_forward_pre_hook(clock.hook, with_kwargs=True)
    collate, collated = trainer.data_collator, []

    def counting_collator(features):  # a second count, in case Unsloth's forward bypasses module hooks
        batch = collate(features)
        mask = batch.get("attention_mask")
        collated.append(int(mask.sum()) if mask is not None else int(batch["input_ids"].numel()))
        return batch

    trainer.data_collator = counting_collator
    torch.cuda.reset_peak_memory_stats()
    trainer.train()
    (t0, c0), (t1, c1) = clock.marks[args.warmup], clock.marks[args.warmup + args.steps]
    tokens = int((c1 - c0)[0])
    if tokens == 0:  # the batches of the timed steps (the data loader fetches one batch ahead: exact per step)
        per_step = len(collated) // (args.warmup + args.steps)
        tokens = sum(collated[args.warmup * per_step:(args.warmup + args.steps) * per_step])
        print(f"unsloth_peer: no tokens seen by the forward hook; counted {tokens} in the collator")
    seconds = t1 - t0
    print("ROW " + json.dumps({
        "recipe": f"Unsloth {unsloth.__version__}, {args.setting.replace('-', ' ')}", "tokens_per_s": tokens / seconds,
        "seconds": seconds, "tokens": tokens, "steps": args.steps, "tokens_per_step": tokens / args.steps,
        "peak_gib": torch.cuda.max_memory_allocated() / 2**30,
        "reserved_gib": torch.cuda.max_memory_reserved() / 2**30, "losses": clock.losses,
        "loss_last": clock.losses[-1][1] if clock.losses else float("nan")}), flush=True)


if __name__ == "__main__":
    main()
