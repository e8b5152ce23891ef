"""Training is correct by construction: EOS in the labels, prompt masked, base frozen, every adapter weight moved."""

import torch
from datasets import load_from_disk

from raftune.data import stage as data_stage
from raftune.models import load_tokenizer, resolve_base
from raftune.sft_data import tokenize_rows
from raftune import train
from raftune.train import label_view, make_trainer

from conftest import mini_config


def _setup(tmp_path, *extra):
    config = mini_config(tmp_path, *extra)
    data_stage.run(config)
    base = resolve_base(config)
    tokenizer = load_tokenizer(base)
    dataset = load_from_disk(str(config.stage_dir("data") / "raft"))
    return config, base, tokenizer, dataset


def test_labels_mask_exactly_the_prompt_and_keep_eos(tmp_path, tiny_cache):
    config, base, tokenizer, dataset = _setup(tmp_path)
    features, report = tokenize_rows(dataset["train"], tokenizer, max_length=1024)
    assert report["kept"] == len(dataset["train"]) == 10 and report["dropped_too_long"] == 0
    trainer = make_trainer(config, base, tokenizer, features, features, tmp_path)
    processed = trainer.train_dataset  # as trl prepared it: the completion mask folded into labels
    batch = trainer.data_collator([processed[0], processed[1]])
    for i, row in enumerate(dataset["train"].select(range(2))):
        labels = batch["labels"][i]
        kept = labels[labels != -100].tolist()
        # decoding the unmasked labels gives back exactly the chain-of-thought answer, then EOS
        assert tokenizer.decode(kept[:-1]).strip() == row["cot_answer"]
        assert kept[-1] == tokenizer.eos_token_id
        ids = batch["input_ids"][i][batch["attention_mask"][i] == 1].tolist()
        assert ids.count(tokenizer.bos_token_id) == 1
    # the shorter row is padded; padding is masked by position even though pad == EOS here
    assert (batch["labels"] == tokenizer.eos_token_id).sum() == 2


def test_label_view_marks_every_token_without_a_label(tmp_path, tiny_cache):
    config, _, tokenizer, dataset = _setup(tmp_path)
    features, _ = tokenize_rows([dataset["train"][0]], tokenizer, max_length=10_000)
    ids, mask = features[0]["input_ids"], features[0]["completion_mask"]
    head, shown = label_view(config, width=100_000).split("\n", 1)
    assert head.startswith(f"{len(ids)} tokens, {sum(mask)} with a label;") and head.endswith("carries a label: True")
    assert 0 < sum(mask) < len(ids) and shown.count("·") == len(ids) - sum(mask)
    config.sft["completion_only_loss"] = False  # whole-sequence loss: every token carries a label
    head, shown = label_view(config, width=100_000).split("\n", 1)
    assert head.startswith(f"{len(ids)} tokens, {len(ids)} with a label;") and "·" not in shown


def test_too_long_rows_are_counted_not_truncated(tmp_path, tiny_cache):
    config, base, tokenizer, dataset = _setup(tmp_path)
    lengths = sorted(len(x) for x in tokenize_rows(dataset["train"], tokenizer, 10_000)[0]["input_ids"])
    features, report = tokenize_rows(dataset["train"], tokenizer, max_length=lengths[4])
    assert report["dropped_too_long"] == sum(n > lengths[4] for n in lengths) > 0
    assert all(len(ids) <= lengths[4] for ids in features["input_ids"])


def test_base_frozen_and_every_adapter_weight_changes(tmp_path, tiny_cache):
    config, base, tokenizer, dataset = _setup(tmp_path, "sft.max_steps=3", "sft.eval_strategy=no")
    features, _ = tokenize_rows(dataset["train"], tokenizer, 1024)
    trainer = make_trainer(config, base, tokenizer, features, features, tmp_path)
    params = dict(trainer.model.named_parameters())
    before = {name: p.detach().clone() for name, p in params.items()}
    assert any("4bit" in type(p).__name__.lower() for p in params.values())  # QLoRA: the base is NF4
    trainer.train()
    lora = [n for n in params if "lora_" in n]
    assert lora and all(params[n].requires_grad for n in lora)
    changed = {n for n in params if not torch.equal(before[n], params[n].detach())}
    assert changed == set(lora), f"unexpected: {sorted(changed ^ set(lora))[:5]}"


def test_completion_loss_is_the_mean_cross_entropy_of_the_answer_tokens():
    """completion_loss projects only the labelled positions, one row at a time: the same value as the mean
    cross-entropy over the answer tokens from the full logits of every row."""
    from transformers import MistralConfig, MistralForCausalLM

    torch.manual_seed(0)
    model = MistralForCausalLM(MistralConfig(vocab_size=90, hidden_size=32, intermediate_size=64,
                                             num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                             head_dim=8))
    rows = [{"input_ids": torch.randint(1, 90, (n,)).tolist(), "completion_mask": [0] * (n - k) + [1] * k}
            for n, k in ((12, 4), (20, 9), (7, 1))]
    total, count = 0.0, 0
    with torch.no_grad():
        for row in rows:
            ids = torch.tensor([row["input_ids"]])
            logits = model(input_ids=ids).logits[0, :-1]
            labelled = torch.tensor(row["completion_mask"][1:]).bool()
            total += torch.nn.functional.cross_entropy(logits[labelled], ids[0, 1:][labelled], reduction="sum").item()
            count += int(labelled.sum())
    assert count == 4 + 9 + 1
    assert abs(train.completion_loss(model, rows, pad_token_id=0) - total / count) < 1e-5
