"""A training run killed with SIGKILL mid-way and resumed with --resume ends with the same adapter weights as an
uninterrupted run with the same seed."""

import os
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load_file

from raftune.data import stage as data_stage

from conftest import MINI_OVERRIDES, ROOT, mini_config

STEPS = ["sft.max_steps=24", "sft.save_strategy=steps", "sft.save_steps=4", "sft.eval_strategy=no",
         "sft.logging_steps=1", "train.sample_prompts=0"]


def raftune_train(runs, *extra):
    overrides = [*MINI_OVERRIDES, f"runs_dir={runs}", "run=mini", *STEPS]
    return [sys.executable, "-m", "raftune", "train", "--config", str(ROOT / "configs" / "demo-tiny.yaml"),
            *overrides, *extra]


def test_sigkill_then_resume_matches_an_uninterrupted_run(tmp_path, tiny_cache):
    env = {**os.environ, "RAFTUNE_CACHE": str(tiny_cache)}
    for name in ("straight", "killed"):
        data_stage.run(mini_config(tmp_path / name))
    subprocess.run(raftune_train(tmp_path / "straight"), check=True, env=env, capture_output=True)

    process = subprocess.Popen(raftune_train(tmp_path / "killed"), env=env, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL)
    checkpoint = tmp_path / "killed" / "mini" / "train" / "checkpoints" / "checkpoint-8" / "trainer_state.json"
    while not checkpoint.exists():
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    process.wait()
    killed_dir = tmp_path / "killed" / "mini" / "train"
    assert not (killed_dir / "adapter").exists() and not (killed_dir / "checkpoints" / "checkpoint-24").exists()

    resumed = subprocess.run(raftune_train(tmp_path / "killed", "--resume"), env=env, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    straight = load_file(tmp_path / "straight" / "mini" / "train" / "adapter" / "adapter_model.safetensors")
    after = load_file(killed_dir / "adapter" / "adapter_model.safetensors")
    assert straight.keys() == after.keys()
    for name in straight:
        torch.testing.assert_close(after[name], straight[name], rtol=1e-4, atol=1e-5)
