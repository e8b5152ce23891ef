"""The seed's four approaches as recipes: each trains on the tiny model, loss falls, the adapter folder is complete."""

import json

import pytest

from raftune import RaftuneError
from raftune.config import load_config
from raftune.data import stage as data_stage
from raftune import train

from conftest import MINI_OVERRIDES, ROOT

RECIPES = ["tiny-docs-trainer", "tiny-qac-trainer", "tiny-raft-sft", "tiny-raft-sft-completion-only"]
FAST = ["sft.num_train_epochs=4", "sft.logging_steps=1", "train.sample_prompts=1", "train.sample_max_new_tokens=8"]


def recipe_config(name, runs, *extra):
    return load_config(ROOT / "configs" / f"{name}.yaml", [*MINI_OVERRIDES, *FAST, f"runs_dir={runs}", *extra])


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipe_trains_and_loss_falls(recipe, tmp_path, tiny_cache):
    config = recipe_config(recipe, tmp_path)
    data_stage.run(config)
    adapter = train.run(config)
    losses = [r["loss"] for r in map(json.loads, (config.stage_dir("train") / "loss.jsonl").read_text().splitlines())
              if "loss" in r]
    assert len(losses) >= 8 and sum(losses[-3:]) < sum(losses[:3])
    names = {p.name for p in adapter.iterdir()}
    assert {"adapter_model.safetensors", "adapter_config.json", "tokenizer.model", "config.yaml", "metrics.json"} <= names
    assert load_config(adapter / "config.yaml").train.approach == config.train.approach
    assert "eval_loss" in json.loads((adapter / "metrics.json").read_text())
    samples = [json.loads(line) for line in (config.stage_dir("train") / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == 4 and all("generation" in s for s in samples)  # one prompt x one evaluation per epoch


def test_missing_column_fails_before_the_model_loads(tmp_path, tiny_cache):
    config = recipe_config("tiny-docs-trainer", tmp_path, "base=no/such-model-anywhere")
    data_stage.run(config)
    path = config.stage_dir("data") / "docs_train.jsonl"
    path.write_text('{"id": "x", "paragraph": "Text"}\n')
    # base names a hub id that does not exist: reaching the model would fail differently (and need the network)
    with pytest.raises(RaftuneError, match=r"docs_train.jsonl: missing column 'text' that train.approach=docs needs"):
        train.run(config)


def test_unknown_approach_is_named(tmp_path):
    with pytest.raises(RaftuneError, match="train.approach='dpo': expected one of docs, qac, raft"):
        recipe_config("tiny-raft-sft", tmp_path, "train.approach=dpo")


def test_completion_only_beats_whole_sequence_on_completion_loss(tmp_path, tiny_cache):
    """Same rows, same steps: the completion-only recipe spends every update on answers, so its held-out answer
    loss is lower than that of the recipe that also learns to reproduce prompts and documents."""
    losses = {}
    for recipe in ("tiny-raft-sft", "tiny-raft-sft-completion-only"):
        config = recipe_config(recipe, tmp_path, "train.sample_prompts=0", "sft.eval_strategy=no")
        data_stage.run(config)
        adapter = train.run(config)
        losses[recipe] = json.loads((adapter / "metrics.json").read_text())["eval_completion_loss"]
    print(losses)
    assert losses["tiny-raft-sft-completion-only"] < losses["tiny-raft-sft"]
