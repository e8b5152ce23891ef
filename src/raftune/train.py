"""`raftune train`: QLoRA (or LoRA) finetuning in one of the seed's four approaches, on one code path.

  train.approach: docs  continued training on paragraphs         transformers.Trainer, labels = input ids
  train.approach: qac   instruction tuning on QAC triplets        transformers.Trainer, prompt masked
  train.approach: raft  RAFT rows with chain-of-thought answers   trl SFTTrainer; sft.completion_only_loss picks
                                                                  loss on the completion only or on everything

Every example is tokenised by `sft_data` (one BOS, EOS in the labels, too-long rows counted); padding is masked by
position, never by token id. The adapter folder gets the weights, the tokenizer with the chat template used in
training, the resolved config and the metrics.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import time
import warnings
from pathlib import Path

from transformers import TrainerCallback

from raftune import RaftuneError, fast, memory_budget
from raftune.chat import encode, render_prompt
from raftune.config import RunConfig, config_to_dict
from raftune.data.formats import read_records
from raftune.figures import length_histogram, loss_curve
from raftune.manifest import Stage, base_provenance, main_process, require_finished, write_json, write_text
from raftune.models import fsdp_checkpointing, load_model, load_tokenizer, resolve_base, save_tokenizer, sharded_qlora
from raftune.sft_data import MaskedCollator, check_columns, tokenize_rows

# bitsandbytes' CPU backend registers no autograd kernel for its 4-bit matmul op and torch warns on every backward;
# gradients still reach every LoRA weight through bitsandbytes' own autograd Function (tests/test_train.py checks
# that each one changes), so the warning only buries the training log.
warnings.filterwarnings("ignore", message="bitsandbytes::gemv_4bit: an autograd kernel was not registered")

# Defaults that raftune needs whatever the recipe says; the recipe's `sft:` section overrides the rest.
# ddp_find_unused_parameters: every LoRA weight gets a gradient in every step, so DDP need not search the graph for
# unused ones (transformers would, for a peft model: a traversal per step, and it breaks reentrant checkpointing).
SFT_DEFAULTS = {"bf16": False, "completion_only_loss": True, "max_length": 2048, "report_to": "none", "logging_steps": 5,
                "save_strategy": "no", "eval_strategy": "no", "seed": 0, "data_seed": 0,
                "ddp_find_unused_parameters": False}


LOGS = ("loss.jsonl", "samples.jsonl")  # one JSON record per line, each with the step it was written at


class JsonlLossLog(TrainerCallback):
    """Appends every log record (loss, eval_loss, learning rate) to a JSONL file as training goes."""

    def __init__(self, path: Path):
        self.path = path
        path.touch()  # never truncated: a resumed run's lines were trimmed to its checkpoint by resume_point

    def on_log(self, args, state, control, logs=None, **kwargs):
        if not state.is_world_process_zero:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps({"step": state.global_step, "time": round(time.time(), 2), **(logs or {})}) + "\n")


class SampleGenerations(TrainerCallback):
    """At every evaluation, greedy answers to a few held-out prompts, appended to samples.jsonl."""

    def __init__(self, path: Path, tokenizer, prompts: list[str], max_new_tokens: int):
        self.path, self.tokenizer, self.prompts, self.max_new_tokens = path, tokenizer, prompts, max_new_tokens

    def on_evaluate(self, args, state, control, model=None, **kwargs):
        import torch

        if not state.is_world_process_zero:
            return

        was_training = model.training
        model.eval()
        records = []
        for prompt in self.prompts:
            ids = torch.tensor([encode(self.tokenizer, prompt)], device=model.device)
            with torch.no_grad():
                out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False,
                                     max_new_tokens=self.max_new_tokens, pad_token_id=self.tokenizer.eos_token_id)
            records.append({"step": state.global_step, "prompt": prompt[-200:],
                            "generation": self.tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=False)})
        with self.path.open("a", encoding="utf-8") as handle:
            handle.writelines(json.dumps(r, ensure_ascii=False) + "\n" for r in records)
        model.train(was_training)


def build_model(base: str, config: RunConfig):
    return adapt_model(load_model(base, config.quantization), config)


def adapt_model(model, config: RunConfig):
    """QLoRA preparation and the LoRA adapter on a loaded base, then the `fast:` levers."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    if config.quantization and not sharded_qlora(config.quantization):
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=bool(config.sft.get("activation_checkpointing", False)))
    elif config.quantization and config.sft.get("activation_checkpointing", False):
        # FSDP-QLoRA: FSDP flattens each wrapped layer's parameters into one tensor of one dtype, so the frozen
        # weights keep the storage dtype (prepare_model_for_kbit_training would cast norms and embeddings to fp32);
        # only the input gradients that checkpointing needs are switched on, as trl does for sharded QLoRA.
        model.enable_input_require_grads()
    if config.quantization:
        # bitsandbytes repacks a 4-bit layer for its CPU inference kernel the first time the layer runs in eval mode
        # without gradients (on CPUs with AVX512-BF16) and keeps it repacked: the steps after an evaluation would
        # compute differently from those of a run resumed past it, which would then not end with the same adapter
        for module in model.modules():
            if hasattr(module, "support_avx512bf16_for_cpu"):
                module.support_avx512bf16_for_cpu = False
    model = get_peft_model(model, LoraConfig(task_type="CAUSAL_LM", **config.lora))
    if fast.enabled(config.fast):
        print(f"train: fast levers {fast.apply(model, config)}")
    return model


def training_arguments(config: RunConfig, out_dir: Path):
    """SFTConfig for the SFTTrainer approach; for Trainer approaches the TrainingArguments part of the same keys."""
    from transformers import TrainingArguments
    from trl import SFTConfig

    values = {**settings(config), "output_dir": str(out_dir / "checkpoints")}
    if fsdp_checkpointing():  # FSDP recomputes every wrapped layer itself; transformers refuses both at once
        values["activation_checkpointing"] = False
    if fast.enabled(config.fast):  # raftune.fast checkpoints the layers itself; a token-budget batch is one row
        values["activation_checkpointing"] = False
        if config.fast.tokens_per_batch:
            values["per_device_train_batch_size"] = 1
    elif config.train.approach == "raft":
        return SFTConfig(**values)
    known = {f.name for f in dataclasses.fields(TrainingArguments)}
    # completion_mask is not an argument of the model's forward; Trainer would drop it before the collator sees it
    return TrainingArguments(**{k: v for k, v in values.items() if k in known}, remove_unused_columns=False)


def settings(config: RunConfig) -> dict:
    """The recipe's `sft:` section over raftune's defaults: every training setting, resolved in one place."""
    return {**SFT_DEFAULTS, **config.sft}


def pad_id(tokenizer) -> int:
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id


def _trl_trainer(config, model, args, tokenizer, train_set, eval_set, callbacks):
    from trl import SFTTrainer

    trainer = SFTTrainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                         processing_class=tokenizer, callbacks=callbacks)
    # trl casts QLoRA adapter weights to bf16; resuming from a checkpoint then loads them through peft, which
    # casts them back to fp32, so a resumed run would continue in another precision than it started in. Keep
    # them in peft's fp32 from the start (they are a few MB), and a resumed run matches an uninterrupted one.
    for param in trainer.model.parameters():
        if param.requires_grad:
            param.data = param.data.float()
    return trainer


def _masked_trainer(config, model, args, tokenizer, train_set, eval_set, callbacks):
    from transformers import Trainer

    return Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                   data_collator=MaskedCollator(pad_id(tokenizer)), callbacks=callbacks)


def _fast_trainer(config, model, args, tokenizer, train_set, eval_set, callbacks):
    """Every approach, when a `fast:` lever is on: Trainer with raftune's (packing) collator and batches."""
    from transformers import Trainer

    sft = settings(config)
    if config.fast.tokens_per_batch:
        train_set = fast.grouped_dataset(train_set, config.fast, sft["data_seed"])
    # qac masks its prompt always (as MaskedCollator does), raft when completion_only_loss; docs has no prompt
    completion_only = config.train.approach != "raft" or sft["completion_only_loss"]
    return Trainer(model=model, args=args, train_dataset=train_set, eval_dataset=eval_set,
                   data_collator=fast.Collator(pad_id(tokenizer), config.fast.packing, completion_only),
                   callbacks=callbacks)


# train.approach -> how its trainer is built (labels as in the module docstring)
TRAINERS = {"raft": _trl_trainer, "qac": _masked_trainer, "docs": _masked_trainer}


def make_trainer(config: RunConfig, base: str, tokenizer, train_set, eval_set, out_dir: Path, callbacks=()):
    from transformers import set_seed

    config = memory_budget.pick(config)  # a no-op for a recipe already picked by run() below
    # LoRA's A matrices are drawn when the adapter is created, before the Trainer seeds anything: seed here, or two
    # runs of one recipe differ from their first update on (B starts at zero, so the first loss hides it)
    set_seed(settings(config)["seed"])
    args = training_arguments(config, out_dir)
    # Under `accelerate launch` this joins the process group and selects this process's GPU, so the 4-bit weights
    # are loaded onto it (loading first would put every process's copy on the first GPU).
    _ = args.device
    model = build_model(base, config)
    trainable, total = model.get_nb_trainable_parameters()
    print(f"train: approach {config.train.approach}, {len(train_set)} rows, LoRA {trainable:,} trainable of "
          f"{total:,} parameters, base {base}")
    eval_set = eval_set if eval_set is not None and len(eval_set) else None
    build = _fast_trainer if fast.enabled(config.fast) else TRAINERS[config.train.approach]
    return build(config, model, args, tokenizer, train_set, eval_set, list(callbacks))


def completion_loss(model, dataset, pad_token_id: int) -> float:
    """Mean cross-entropy over completion tokens only: the one loss that compares recipes whatever they trained on.
    One row at a time, with logits only at the positions whose next token is a label (`logits_to_keep`): a
    SmolLM2 row of 700 tokens would otherwise hold 700 x 49,152 float logits, and a batch of them gigabytes."""
    import torch

    collate = MaskedCollator(pad_token_id)
    was_training = model.training
    model.eval()
    total, count = 0.0, 0
    with torch.no_grad():
        for index in range(len(dataset)):
            batch = {k: v.to(model.device) for k, v in collate([dataset[index]]).items()}
            targets = batch["labels"][0, 1:]
            keep = (targets != -100).nonzero().squeeze(1)
            if not len(keep):
                continue
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                           logits_to_keep=keep).logits[0]
            loss = torch.nn.functional.cross_entropy(logits.float(), targets[keep], reduction="sum")
            total, count = total + loss.item(), count + len(keep)
    model.train(was_training)
    return total / max(count, 1)


def load_examples(config: RunConfig) -> dict[str, list[dict]]:
    """The train and eval examples of the configured approach, from the data stage's files."""
    import datasets

    approach = config.train.approach  # one of config.APPROACHES, checked when the recipe loaded
    data_dir = require_finished(config, "data", "raftune data build")
    splits = {}
    for split in ("train", "eval"):
        if approach == "raft":
            path = data_dir / "raft"
            try:
                rows = datasets.load_from_disk(str(path))[split]
            except Exception as err:  # noqa: BLE001 - datasets raises several unrelated types for a broken folder
                raise RaftuneError(f"{path}: no readable RAFT dataset ({type(err).__name__}: {err}); rerun "
                                   f"`raftune data build`") from None
        else:
            path = data_dir / f"{approach}_{split}.jsonl"
            if not path.is_file():
                raise RaftuneError(f"no {approach} examples at {path}; run `raftune data build` first")
            rows, _ = read_records(path)
        if split == "train" or len(rows):
            check_columns(rows, approach, str(path))
        splits[split] = rows
    return splits


def label_view(config: RunConfig, width: int = 400) -> str:
    """The first training example as the loss sees it: its length, how many tokens carry a label, BOS and EOS, and
    its last `width` characters with every token that carries no label shown as '·'."""
    tokenizer = load_tokenizer(resolve_base(config))
    features, _ = tokenize_rows([load_examples(config)["train"][0]], tokenizer, 10_000, config.train.approach)
    ids, mask = features[0]["input_ids"], features[0]["completion_mask"]
    if config.train.approach == "raft" and not config.sft.get("completion_only_loss", True):
        mask = [1] * len(ids)  # whole-sequence loss: trl labels every token
    return (f"{len(ids)} tokens, {sum(mask)} with a label; first id {ids[0]} is BOS ({tokenizer.bos_token}), last id "
            f"{ids[-1]} is EOS ({tokenizer.eos_token}) and carries a label: {bool(mask[-1])}\n"
            + "".join(tokenizer.decode([t]) if m else "·" for t, m in zip(ids, mask))[-width:])


def sample_prompts(config: RunConfig, tokenizer, rows) -> list[str]:
    rows = list(rows)[: config.train.sample_prompts]
    if config.train.approach == "docs":  # continued pre-training: continue the first words of a held-out paragraph
        return [tokenizer.bos_token + " ".join(r["text"].split()[:12]) for r in rows]
    return [render_prompt(tokenizer, r["question"], r["documents"] if "documents" in r else [r["context"]])
            for r in rows]


def checkpoint_problem(path: Path) -> str | None:
    """Why a checkpoint folder cannot be resumed from (None: it can): the trainer state and the weights must be there
    and readable. A kill while the trainer writes one leaves an empty or truncated folder."""
    from safetensors import safe_open

    try:
        step = json.loads((path / "trainer_state.json").read_text())["global_step"]
    except (OSError, ValueError, KeyError) as err:
        return f"trainer_state.json unreadable ({type(err).__name__})"
    if not isinstance(step, int):
        return "trainer_state.json has no global_step"
    weights = sorted(path.glob("*.safetensors"))
    if not weights:
        return "no weights (*.safetensors)"
    for file in weights:
        try:
            with safe_open(str(file), "pt") as handle:
                handle.keys()
        except Exception as err:  # noqa: BLE001 - safetensors raises its own error types for a truncated file
            return f"{file.name} unreadable ({type(err).__name__})"
    import zipfile

    for file in path.glob("*.pt*"):  # optimizer, scheduler, RNG states: torch.save zips, their index written last
        if not zipfile.is_zipfile(file):
            return f"{file.name} truncated"
    return None


def _step(path: Path) -> int:
    tail = path.name.rsplit("-", 1)[-1]
    return int(tail) if tail.isdigit() else -1


def resume_point(stage: Stage) -> Path | None:
    """The newest complete checkpoint: of the unfinished run in the work folder if it has any, else of the finished
    run. Broken checkpoints are said, skipped and (in the work folder) removed; the trainer writes them again. The
    work folder's logs are trimmed back to the checkpoint's step (taken from the finished run when resuming that)."""
    found = None
    for folder in (stage.dir / "checkpoints", stage.final / "checkpoints"):
        candidates = sorted(folder.glob("checkpoint-*"), key=_step, reverse=True)
        for path in candidates:
            problem = checkpoint_problem(path)
            if problem is None:
                found = path
                break
            print(f"train: skipping {path}: {problem}")
            if main_process() and folder == stage.dir / "checkpoints":
                shutil.rmtree(path)
        if candidates:
            break
    if not main_process():
        return found
    if found is None:
        print(f"train: --resume given but no complete checkpoint in {stage.dir / 'checkpoints'} or "
              f"{stage.final / 'checkpoints'}; starting from step 0")
        for name in LOGS:
            (stage.dir / name).unlink(missing_ok=True)
        return None
    step = json.loads((found / "trainer_state.json").read_text())["global_step"]
    logs_from = found.parent.parent
    for name in LOGS:
        if (logs_from / name).is_file():
            write_text(stage.dir / name, "".join(line + "\n" for line in _lines_up_to(logs_from / name, step)))
        else:
            (stage.dir / name).unlink(missing_ok=True)
    print(f"train: resuming from {found} (step {step})")
    return found


def _lines_up_to(path: Path, step: int) -> list[str]:
    """The log lines written up to `step`; a line cut off by a kill is dropped."""
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            if json.loads(line)["step"] <= step:
                kept.append(line)
        except (ValueError, KeyError, TypeError):
            continue
    return kept


def run(config: RunConfig, resume: bool = False, make_collator=None):
    """Train the recipe's adapter. `make_collator(tokenizer)` replaces the data collator: only for reproducing a
    training mistake on purpose (raftune.export.failure_modes.PadIsEosCollator)."""
    examples = load_examples(config)  # fails on a missing file or column before any model is loaded
    config = memory_budget.pick(config)  # before the manifest and the adapter's config.yaml record the recipe
    work = config.stage_dir("train").with_name("train.partial")
    if not resume and main_process() and any(checkpoint_problem(p) is None
                                             for p in (work / "checkpoints").glob("checkpoint-*")):
        # starting over would delete them: hours of GPU time, perhaps
        raise RaftuneError(f"{work} holds checkpoints of a run that did not finish; continue it with "
                           f"`raftune train --resume`, or delete that folder to start over")
    base = resolve_base(config)
    # the run writes into runs/<run>/train.partial (checkpoints and logs included) and replaces runs/<run>/train only
    # when it has finished: a failing or killed rerun leaves the finished run's adapter and logs as they were
    stage = Stage(config, "train", {"approach": config.train.approach, "data": str(config.stage_dir("data")),
                                    **base_provenance(base)}, keep=resume)
    checkpoint = resume_point(stage) if resume else None
    tokenizer = load_tokenizer(base)
    sft = settings(config)
    train_set, train_report = tokenize_rows(examples["train"], tokenizer, sft["max_length"], config.train.approach)
    eval_set, eval_report = tokenize_rows(examples["eval"], tokenizer, sft["max_length"], config.train.approach)
    for name, report in (("train", train_report), ("eval", eval_report)):
        if report["dropped_too_long"]:
            print(f"train: dropped {report['dropped_too_long']} of {report['rows']} {name} rows longer than "
                  f"max_length={report['max_length']} tokens: {report['dropped_ids'][:5]}")
    if not len(train_set):
        raise RaftuneError(f"no training rows left after dropping rows over max_length={sft['max_length']}")

    callbacks = [JsonlLossLog(stage.dir / "loss.jsonl")]
    if config.train.sample_prompts and len(examples["eval"]):
        callbacks.append(SampleGenerations(stage.dir / "samples.jsonl", tokenizer,
                                           sample_prompts(config, tokenizer, examples["eval"]),
                                           config.train.sample_max_new_tokens))
    trainer = make_trainer(config, base, tokenizer, train_set, eval_set, stage.dir, callbacks)
    if make_collator is not None:
        trainer.data_collator = make_collator(tokenizer)
    result = trainer.train(resume_from_checkpoint=str(checkpoint) if checkpoint else None)
    if not trainer.is_world_process_zero():  # under accelerate launch, one process writes the results
        return stage.final / "adapter"

    adapter_dir = stage.dir / "adapter"
    trainer.model.save_pretrained(str(adapter_dir))
    save_tokenizer(tokenizer, base, adapter_dir)  # carries the chat template used in training
    evals = [log for log in trainer.state.log_history if "eval_loss" in log]
    metrics = {"train_loss": result.training_loss, "steps": result.global_step, **result.metrics,
               **({"eval_loss": evals[-1]["eval_loss"], "eval_step": evals[-1]["step"]} if evals else {})}
    if len(eval_set):
        pad = pad_id(tokenizer)
        metrics["eval_completion_loss"] = completion_loss(trainer.model, eval_set, pad)
    write_json(adapter_dir / "metrics.json", metrics)
    import yaml

    write_text(adapter_dir / "config.yaml", yaml.safe_dump(config_to_dict(config), sort_keys=False, allow_unicode=True))

    loss_curve(stage.dir / "loss.jsonl", stage.dir / "loss.png")
    length_histogram({"prompt": train_report["prompt_lengths"], "completion": train_report["completion_lengths"]},
                     stage.dir / "lengths.png", sft["max_length"])
    stage.outputs = {"adapter": str(adapter_dir), "world_size": trainer.args.world_size,
                     **{k: v for k, v in metrics.items() if isinstance(v, (int, float))}}
    write_json(stage.dir / "token_report.json", {"train": train_report, "eval": eval_report})
    stage.finish()
    print(f"train: {result.global_step} steps on {trainer.args.world_size} process(es), loss "
          f"{result.training_loss:.3f} -> {stage.outputs['adapter']}")
    return stage.dir / "adapter"
