"""The GPU recipe that fits a memory budget: `fast.pick: true` trains with the fastest shipped setting whose measured
peak stays under the budget (`fast.memory_budget_gib`, default: the GPU's free memory less a margin).

Each setting is a shipped recipe file of the fast family; what it decides (its `fast:` section, its step size and the
learning rate chosen for it) replaces the running recipe's, and `sft.max_steps` is rescaled so that the run sees as many
tokens as the running recipe would have. Its peak and speed were measured by bench/train_throughput.py on the card
named in MEASURED_ON (a Mistral-7B-shaped NF4 model, sequences of 700-2048 tokens): a setting fits where its measured
peak, torch's `max_memory_allocated`, is at most the budget."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from raftune import RaftuneError
from raftune.config import RunConfig, config_from_dict, load_config

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
MEASURED_ON = "NVIDIA H100 80GB HBM3, bench/train_throughput.py --warmup 2 --steps 4, 2026-12-06"
# the `sft:` keys a setting decides beside its `fast:` section: its step size and the learning rate chosen for it
STEP_KEYS = ("gradient_accumulation_steps", "learning_rate")


@dataclass(frozen=True)
class Setting:
    recipe: str            # the shipped recipe file (configs/)
    peak_gib: float        # measured peak of allocated GPU memory
    tokens_per_s: float    # measured real (non-padding) tokens per second


SETTINGS = (
    Setting("mistral-7b-qlora-raft-fast.yaml", 69.69, 14146),
    Setting("mistral-7b-qlora-raft-48gib.yaml", 46.73, 12179),
    Setting("mistral-7b-qlora-raft-40gib.yaml", 39.08, 11774),
    Setting("mistral-7b-qlora-raft-24gib.yaml", 23.81, 10851),
    Setting("mistral-7b-qlora-raft-12gib.yaml", 10.62, 9949),
    Setting("mistral-7b-qlora-raft-memory.yaml", 7.06, 9459),
    Setting("mistral-7b-qlora-raft-lowmem.yaml", 5.68, 5628),
)


def margin_gib(total_gib: float) -> float:
    """What the default budget leaves free: allocator blocks that are reserved but not allocated (fragmentation under
    packed batches of varying length) and other processes' growth; 5 % of the card, at least 0.5 GiB."""
    return max(0.5, 0.05 * total_gib)


def fitting(budget_gib: float) -> Setting | None:
    """The fastest setting whose measured peak is at most the budget; None when none fits."""
    fits = [s for s in SETTINGS if s.peak_gib <= budget_gib]
    return max(fits, key=lambda s: s.tokens_per_s) if fits else None


def setting_values(recipe: str) -> dict:
    """What a setting decides, read from its recipe file: {'fast': {...}, 'sft': {step keys}}."""
    config = load_config(CONFIGS / recipe)
    fast = {k: v for k, v in dataclasses.asdict(config.fast).items() if k not in ("pick", "memory_budget_gib")}
    return {"fast": fast, "sft": {k: config.sft[k] for k in STEP_KEYS if k in config.sft}}


def gpu_budget() -> tuple[float, str] | None:
    """(budget GiB, how it was found) from the free memory of this process's GPU; None without CUDA."""
    import torch

    if not torch.cuda.is_available():
        return None
    free, total = (b / 2**30 for b in torch.cuda.mem_get_info())
    margin = margin_gib(total)
    return free - margin, f"{free:.1f} GiB free on {torch.cuda.get_device_name()} less a {margin:.1f} GiB margin"


def pick(config: RunConfig) -> RunConfig:
    """The recipe with the setting that fits its budget, when `fast.pick` is on; otherwise the recipe unchanged."""
    if not config.fast.pick:
        return config
    if config.fast.memory_budget_gib is not None:
        budget, why = config.fast.memory_budget_gib, "fast.memory_budget_gib"
    else:
        found = gpu_budget()
        if found is None:
            print("train: fast.pick: no GPU here; training with the recipe as written")
            return dataclasses.replace(config, fast=dataclasses.replace(config.fast, pick=False))
        budget, why = found
    chosen = fitting(budget)
    if chosen is None:
        smallest = min(SETTINGS, key=lambda s: s.peak_gib)

        raise RaftuneError(f"fast.pick: no shipped setting fits {budget:.1f} GiB ({why}); the smallest, "
                           f"{smallest.recipe}, peaked at {smallest.peak_gib} GiB")
    values = setting_values(chosen.recipe)
    raw = dataclasses.asdict(config)
    raw["fast"] = {**raw["fast"], **values["fast"], "pick": False}
    raw["sft"] = {**raw["sft"], **values["sft"]}
    steps = ""
    if "max_steps" in config.sft and config.fast.tokens_per_batch:  # as many tokens in steps of another size
        before = config.fast.tokens_per_batch * config.sft.get("gradient_accumulation_steps", 1)
        after = raw["fast"]["tokens_per_batch"] * raw["sft"].get("gradient_accumulation_steps", 1)
        raw["sft"]["max_steps"] = round(config.sft["max_steps"] * before / after)
        steps = f", {raw['sft']['max_steps']} steps of {after:,} tokens"
    print(f"train: fast.pick: {chosen.recipe} for a budget of {budget:.1f} GiB ({why}): measured peak "
          f"{chosen.peak_gib} GiB, {chosen.tokens_per_s:,.0f} tokens/s ({MEASURED_ON}){steps}")
    return config_from_dict(raw, f"fast.pick ({chosen.recipe})")
