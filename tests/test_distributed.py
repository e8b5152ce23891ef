"""The same recipe under `accelerate launch` with DDP: two CPU processes over gloo, one set of results."""

import json
import os
import subprocess
import sys
from pathlib import Path

from raftune.data import stage as data_stage

from conftest import MINI_OVERRIDES, ROOT, mini_config


def test_ddp_on_two_cpu_processes(tmp_path, tiny_cache):
    data_stage.run(mini_config(tmp_path))
    accelerate = Path(sys.executable).parent / "accelerate"
    result = subprocess.run(
        [str(accelerate), "launch", "--config_file", str(ROOT / "configs/accelerate/ddp-cpu.yaml"), "-m", "raftune",
         "train", "--config", str(ROOT / "configs/demo-tiny.yaml"), *MINI_OVERRIDES, f"runs_dir={tmp_path}", "run=mini",
         "sft.use_cpu=true", "sft.max_steps=4", "sft.logging_steps=1", "train.sample_prompts=1",
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
