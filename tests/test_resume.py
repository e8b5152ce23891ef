"""Training killed and rerun: a failing or killed rerun leaves the finished run's files exactly as they were;
`--resume` falls back past broken checkpoints to the newest complete one and ends with the same adapter (and the same
log lines, none twice) as the uninterrupted run."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import torch
from safetensors.torch import load, load_file

from raftune.cli import main
from raftune.data import stage as data_stage

from conftest import MINI_OVERRIDES, ROOT, mini_config

STEPS = ["sft.max_steps=16", "sft.save_strategy=steps", "sft.save_steps=4", "sft.eval_strategy=steps",
         "sft.eval_steps=8", "sft.logging_steps=1", "train.sample_prompts=1", "train.sample_max_new_tokens=4"]


def raftune_train(runs, *extra):
    return ["train", "--config", str(ROOT / "configs" / "demo-tiny.yaml"), *MINI_OVERRIDES, f"runs_dir={runs}",
            "run=mini", *STEPS, *extra]


def snapshot(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


# wall-clock fields, and counters that start again with the process: the trainer's closing mean loss and FLOPs
# (over the resumed steps only) and trl's token count (not part of a checkpoint)
UNEQUAL = {"time", "train_runtime", "train_samples_per_second", "train_steps_per_second", "eval_runtime",
           "eval_samples_per_second", "eval_steps_per_second", "train_loss", "total_flos", "num_tokens",
           "eval_num_tokens"}


def records(path):
    return [{k: v for k, v in json.loads(line).items() if k not in UNEQUAL} for line in path.read_text().splitlines()]


def assert_logs_match(resumed, straight):
    assert [r["step"] for r in resumed] == [r["step"] for r in straight]  # nothing twice, nothing missing
    for a, b in zip(resumed, straight):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float):
                assert abs(a[key] - b[key]) <= 1e-4 * max(1.0, abs(b[key])), (a, b)
            else:
                assert a[key] == b[key], (a, b)


def test_failing_and_killed_reruns_leave_the_run_and_resume_falls_back_past_broken_checkpoints(tmp_path, tiny_cache,
                                                                                              capsys):
    env = {**os.environ, "RAFTUNE_CACHE": str(tiny_cache)}
    data_stage.run(mini_config(tmp_path))
    assert main(raftune_train(tmp_path)) == 0
    train_dir = tmp_path / "mini" / "train"
    finished = snapshot(train_dir)
    straight_loss, straight_samples = records(train_dir / "loss.jsonl"), records(train_dir / "samples.jsonl")
    assert [r["step"] for r in straight_samples] == [8, 16]

    # a rerun with a bad value: one line, nothing touched
    capsys.readouterr()
    assert main(raftune_train(tmp_path, "sft.learning_rate=fast")) == 2
    assert "sft.learning_rate='fast': expected a number > 0" in capsys.readouterr().err
    assert snapshot(train_dir) == finished

    # a rerun (--force: the finished run is up to date) killed while it writes checkpoint-12
    process = subprocess.Popen([sys.executable, "-m", "raftune", *raftune_train(tmp_path, "--force")], env=env,
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    checkpoints = tmp_path / "mini" / "train.partial" / "checkpoints"
    while not (checkpoints / "checkpoint-12").exists():
        assert process.poll() is None, "training ended before it could be killed"
        time.sleep(0.005)
    process.send_signal(signal.SIGKILL)
    process.wait()
    assert snapshot(train_dir) == finished  # the finished run's adapter, logs and checkpoints, byte for byte
    # whatever the kill left of checkpoint-12, make it a cut-off one, and add the empty folder of another kill
    (checkpoints / "checkpoint-12" / "trainer_state.json").write_text('{"global_step": 1')
    shutil.rmtree(checkpoints / "checkpoint-16", ignore_errors=True)
    (checkpoints / "checkpoint-16").mkdir()

    capsys.readouterr()
    assert main(raftune_train(tmp_path)) == 0  # up to date: skipped, the checkpoints left alone
    assert capsys.readouterr().out == f"train: up to date ({train_dir / 'manifest.json'}); --force reruns it\n"
    assert main(raftune_train(tmp_path, "--force")) == 2  # a rerun would delete the checkpoints: it refuses
    assert "train.partial holds checkpoints of a run that did not finish; continue it with `raftune train --resume`" \
        in capsys.readouterr().err

    resumed = subprocess.run([sys.executable, "-m", "raftune", *raftune_train(tmp_path, "--resume")], env=env,
                             capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    assert f"train: skipping {checkpoints / 'checkpoint-16'}: trainer_state.json unreadable" in resumed.stdout
    assert f"train: skipping {checkpoints / 'checkpoint-12'}: trainer_state.json unreadable" in resumed.stdout
    assert f"train: resuming from {checkpoints / 'checkpoint-8'} (step 8)" in resumed.stdout
    assert not checkpoints.parent.exists()
    expected = load(finished["adapter/adapter_model.safetensors"])
    after = load_file(train_dir / "adapter" / "adapter_model.safetensors")
    assert expected.keys() == after.keys()
    for name in expected:
        torch.testing.assert_close(after[name], expected[name], rtol=1e-4, atol=1e-5)
    assert_logs_match(records(train_dir / "loss.jsonl"), straight_loss)
    assert_logs_match(records(train_dir / "samples.jsonl"), straight_samples)
