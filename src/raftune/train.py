"""`raftune train`: QLoRA (or LoRA) supervised finetuning on RAFT rows with trl's SFTTrainer.

Loss is on the completion only by default (the prompt tokens are masked with -100 by trl's collator, from the
`completion_mask` that `sft_data.tokenize_rows` builds); padding is masked by position, never by token id, so
EOS stays a label even where it doubles as the pad token.
"""

from __future__ import annotations

import json
import time

from datasets import load_from_disk
from transformers import TrainerCallback

from raftune import RaftuneError
from raftune.config import RunConfig
from raftune.manifest import Stage, write_json
from raftune.models import base_provenance, load_model, load_tokenizer, resolve_base, save_tokenizer
from raftune.sft_data import tokenize_rows

# Defaults that raftune needs whatever the recipe says; the recipe's `sft:` section overrides the rest.
SFT_DEFAULTS = {"bf16": False, "completion_only_loss": True, "max_length": 2048, "report_to": "none", "logging_steps": 5,
                "save_strategy": "no", "eval_strategy": "no", "seed": 0, "data_seed": 0}


class JsonlLossLog(TrainerCallback):
    """Appends every log record (loss, eval_loss, learning rate) to a JSONL file as training goes."""

    def __init__(self, path):
        self.path = path
        self.path.write_text("")

    def on_log(self, args, state, control, logs=None, **kwargs):
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": state.global_step, "time": round(time.time(), 2), **(logs or {})}) + "\n")


def build_model(base: str, config: RunConfig):
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    model = load_model(base, config.quantization)
    if config.quantization:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(config.sft.get("activation_checkpointing", False)))
    return get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **config.lora))


def make_trainer(config: RunConfig, base: str, tokenizer, train_set, eval_set, out_dir):
    from trl import SFTConfig, SFTTrainer

    model = build_model(base, config)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"train: {len(train_set)} rows, LoRA {trainable:,} trainable of {total:,} parameters, base {base}")
    args = SFTConfig(output_dir=str(out_dir / "checkpoints"), **{**SFT_DEFAULTS, **config.sft})
    return SFTTrainer(model=model, args=args, train_dataset=train_set,
                      eval_dataset=eval_set if len(eval_set) else None, processing_class=tokenizer,
                      callbacks=[JsonlLossLog(out_dir / "loss.jsonl")])


def run(config: RunConfig):
    data_dir = config.stage_dir("data") / "raft"
    if not data_dir.is_dir():
        raise RaftuneError(f"no RAFT dataset at {data_dir}; run `raftune data build` first")
    base = resolve_base(config)
    stage = Stage(config, "train", {"dataset": str(data_dir), **base_provenance(base)})
    tokenizer = load_tokenizer(base)
    sft = {**SFT_DEFAULTS, **config.sft}
    dataset = load_from_disk(str(data_dir))
    train_set, train_report = tokenize_rows(dataset["train"], tokenizer, sft["max_length"])
    eval_set, eval_report = tokenize_rows(dataset["eval"], tokenizer, sft["max_length"])
    for name, report in (("train", train_report), ("eval", eval_report)):
        if report["dropped_too_long"]:
            print(f"train: dropped {report['dropped_too_long']} of {report['rows']} {name} rows longer than "
                  f"max_length={report['max_length']} tokens: {report['dropped_ids'][:5]}")
    if not len(train_set):
        raise RaftuneError(f"no training rows left after dropping rows over max_length={sft['max_length']}")

    trainer = make_trainer(config, base, tokenizer, train_set, eval_set, stage.dir)
    result = trainer.train()

    adapter_dir = stage.dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    save_tokenizer(tokenizer, base, adapter_dir)  # carries the chat template used in training
    from raftune.plots import length_histogram, loss_curve

    loss_curve(stage.dir / "loss.jsonl", stage.dir / "loss.png")
    length_histogram({"prompt": train_report["prompt_lengths"], "completion": train_report["completion_lengths"]},
                     stage.dir / "lengths.png", sft["max_length"])
    stage.outputs = {"adapter": str(adapter_dir), "train_loss": result.training_loss,
                     "steps": result.global_step}
    write_json(stage.dir / "token_report.json", {"train": train_report, "eval": eval_report})
    stage.finish()
    print(f"train: {result.global_step} steps, loss {result.training_loss:.3f} -> {adapter_dir}")
    return adapter_dir
