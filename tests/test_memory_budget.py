"""raftune.memory_budget: the shipped GPU settings fit the cards they are stated for, and `fast.pick` chooses the
fastest one that fits a budget."""

import dataclasses

import pytest

from raftune import RaftuneError, memory_budget
from raftune.config import load_config
from conftest import ROOT

FAST = ROOT / "configs" / "mistral-7b-qlora-raft-fast.yaml"
AUTO = ROOT / "configs" / "mistral-7b-qlora-raft-auto.yaml"
H100_USABLE_GIB = 79.2  # what torch can allocate on an 80 GB H100


def test_the_fast_recipe_fits_an_80_gb_h100_with_its_margin():
    """The fast recipe's measured peak plus the margin the picker keeps stays under the card it is written for."""
    fast = next(s for s in memory_budget.SETTINGS if s.recipe == FAST.name)
    assert fast.peak_gib + memory_budget.margin_gib(H100_USABLE_GIB) <= H100_USABLE_GIB
    assert memory_budget.fitting(H100_USABLE_GIB - memory_budget.margin_gib(H100_USABLE_GIB)) == fast


def test_every_setting_is_a_shipped_recipe_and_faster_settings_need_more_memory():
    """A setting that is slower and bigger than another would never be picked: the frontier only rises."""
    rows = sorted(memory_budget.SETTINGS, key=lambda s: s.peak_gib)
    for row in rows:
        assert (ROOT / "configs" / row.recipe).is_file()
        assert memory_budget.setting_values(row.recipe)["fast"]["tokens_per_batch"] > 0
    assert [r.tokens_per_s for r in rows] == sorted(r.tokens_per_s for r in rows)


@pytest.mark.parametrize("budget", [5.0, 6.0, 8.0, 12.0, 16.0, 24.0, 40.0, 48.0, 80.0])
def test_a_budget_picks_the_fastest_setting_under_it(budget):
    fits = [s for s in memory_budget.SETTINGS if s.peak_gib <= budget]
    chosen = memory_budget.fitting(budget)
    if not fits:
        assert chosen is None
        return
    assert chosen.peak_gib <= budget and chosen.tokens_per_s == max(s.tokens_per_s for s in fits)


def test_pick_applies_the_chosen_recipes_fast_and_step_settings(capsys):
    budget = 7.5
    chosen = memory_budget.fitting(budget)
    config = memory_budget.pick(load_config(AUTO, [f"fast.memory_budget_gib={budget}", "sft.num_train_epochs=3"]))
    written = load_config(ROOT / "configs" / chosen.recipe)
    assert config.fast.tokens_per_batch == written.fast.tokens_per_batch
    assert config.fast.checkpoint_layers == written.fast.checkpoint_layers
    assert config.fast.offload_checkpoints == written.fast.offload_checkpoints
    assert config.sft["learning_rate"] == written.sft["learning_rate"]
    assert config.sft["gradient_accumulation_steps"] == written.sft["gradient_accumulation_steps"]
    assert config.sft["num_train_epochs"] == 3  # the running recipe's other settings stay
    # as many tokens as the running recipe's 48 steps of 2 x 14,336, in steps of 12,288
    assert config.sft["max_steps"] == round(48 * 2 * 14336 / 12288)
    assert config.run == "mistral-7b-qlora-raft-auto" and not config.fast.pick
    out = capsys.readouterr().out.strip().splitlines()
    assert len(out) == 1 and chosen.recipe in out[0] and "7.5 GiB" in out[0]
    assert memory_budget.pick(config) is config  # picked once: a second call changes nothing


def test_pick_without_a_gpu_says_so_and_keeps_the_recipe(capsys, monkeypatch):
    monkeypatch.setattr(memory_budget, "gpu_budget", lambda: None)
    config = load_config(AUTO)
    picked = memory_budget.pick(config)
    assert dataclasses.replace(picked.fast, pick=True) == config.fast and picked.sft == config.sft
    assert "no GPU here" in capsys.readouterr().out


def test_the_default_budget_is_free_memory_less_the_margin(monkeypatch, capsys):
    monkeypatch.setattr(memory_budget, "gpu_budget", lambda: (77.0 - memory_budget.margin_gib(79.6), "test card"))
    picked = memory_budget.pick(load_config(AUTO))
    assert picked.fast.tokens_per_batch == load_config(FAST).fast.tokens_per_batch
    assert "test card" in capsys.readouterr().out


def test_no_setting_fits_a_tiny_budget():
    with pytest.raises(RaftuneError, match="no shipped setting fits 2.0 GiB"):
        memory_budget.pick(load_config(AUTO, ["fast.memory_budget_gib=2"]))


def test_a_recipe_without_pick_is_not_touched():
    config = load_config(FAST, ["fast.memory_budget_gib=8"])
    assert memory_budget.pick(config) is config


def test_a_recipe_named_for_a_budget_fits_it():
    named = [s for s in memory_budget.SETTINGS if s.recipe.endswith("gib.yaml")]
    assert len(named) == 4
    for setting in named:
        assert setting.peak_gib <= float(setting.recipe.rsplit("-", 1)[1].removesuffix("gib.yaml"))
