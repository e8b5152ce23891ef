"""The same recipe under `accelerate launch` with DDP: two CPU processes over gloo, one set of results, and the
same adapter as one process with the same global batch and seed."""

import json
import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from raftune import train
from raftune.data import stage as data_stage

from conftest import MINI_OVERRIDES, ROOT, mini_config


# LoRA dropout draws different masks in one and in two processes; without it, the runs must agree. 4 steps of a
# global batch of 2 stay inside the first epoch of the 10 mini rows (accelerate evens out a last, partial batch).
EQUAL = ["lora.lora_dropout=0", "sft.max_steps=4", "sft.logging_steps=1"]


def test_ddp_on_two_cpu_processes(tmp_path, tiny_cache):
    data_stage.run(mini_config(tmp_path))
    accelerate = Path(sys.executable).parent / "accelerate"
    result = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(ROOT / "configs/accelerate/ddp-cpu.yaml"), "-m", "raftune",
         "train", "--config", str(ROOT / "configs/demo-tiny.yaml"), *MINI_OVERRIDES, f"runs_dir={tmp_path}", "run=mini",
         "sft.use_cpu=true", *EQUAL, "sft.per_device_train_batch_size=1", "train.sample_prompts=1",
         "train.sample_max_new_tokens=4"],
        env={**os.environ, "RAFTUNE_CACHE": str(tiny_cache)}, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    train_dir = tmp_path / "mini" / "train"
    manifest = json.loads((train_dir / "manifest.json").read_text())
    assert manifest["outputs"]["world_size"] == 2
    steps = [json.loads(line)["step"] for line in (train_dir / "loss.jsonl").read_text().splitlines()
             if '"loss"' in line]
    assert steps == [1, 2, 3, 4]  # logged once, by the main process
    assert result.stdout.count("train: 4 steps on 2 process(es)") == 1
    assert (train_dir / "adapter" / "adapter_model.safetensors").is_file()

    # one process, twice the per-device batch: the same global batches, the same seed, the same adapter
    single = mini_config(tmp_path / "single", *EQUAL, "sft.per_device_train_batch_size=2", "train.sample_prompts=0")
    data_stage.run(single)
    one = load_file(train.run(single) / "adapter_model.safetensors")
    two = load_file(train_dir / "adapter" / "adapter_model.safetensors")
    assert one.keys() == two.keys()
    for name in one:
        torch.testing.assert_close(two[name], one[name], atol=1e-5, rtol=1e-4)


def test_under_fsdp_the_same_recipe_stores_4bit_weights_in_one_float_dtype(tmp_path, tiny_cache, monkeypatch):
    """`accelerate launch` with an FSDP config (its environment variables): FSDP flattens a layer's weights into one
    tensor of one dtype, so the NF4 weights are stored in the compute dtype and every frozen weight has that dtype;
    raftune's own checkpointing steps aside for FSDP's, and the Trainer is not asked for a second one."""
    from raftune import fast
    from raftune.models import resolve_base

    config = mini_config(tmp_path, "quantization.bnb_4bit_compute_dtype=bfloat16", "sft.activation_checkpointing=true",
                         "fast.packing=true", "fast.checkpoint_layers=2")
    base = resolve_base(config)
    frozen = lambda model: {p.dtype for p in model.parameters() if not p.requires_grad}
    assert frozen(train.build_model(base, config)) == {torch.uint8, torch.float32}  # one process: peft's fp32 casts
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")
    monkeypatch.setenv("FSDP_ACTIVATION_CHECKPOINTING", "true")
    model = train.build_model(base, config)
    assert frozen(model) == {torch.bfloat16}
    assert not any(layer.gradient_checkpointing for layer in fast._decoder(model).model.layers)
    assert train.training_arguments(config, tmp_path).activation_checkpointing is False
