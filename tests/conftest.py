"""Shared fixtures: a mini corpus (tests/fixtures/mini) and a tiny model small enough to build in seconds."""

from __future__ import annotations

import contextlib
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from raftune.config import load_config

ROOT = Path(__file__).resolve().parents[1]
MINI = ROOT / "tests" / "fixtures" / "mini"
SHARED = ROOT.parent / "shared"

MINI_OVERRIDES = [
    f"data.corpus={MINI / 'corpus'}", f"data.qac={MINI / 'qac.json'}", f"evaluate.testset={MINI / 'testset.json'}",
    "data.num_distractors=2", "data.rows_per_question=2", "data.eval_fraction=0.2",
    # a 2-layer model with 32-wide heads: big enough for llama.cpp's kernels, built in a few seconds
    "tiny.hidden_size=64", "tiny.intermediate_size=128", "tiny.num_hidden_layers=2", "tiny.num_attention_heads=2",
    "tiny.num_key_value_heads=1", "tiny.pretrain_steps=30",
    "sft.num_train_epochs=2", "sft.per_device_train_batch_size=2", "sft.learning_rate=5e-3", "sft.report_to=none",
    "evaluate.max_new_tokens=12",
]


@pytest.fixture(scope="session")
def tiny_cache(tmp_path_factory, monkeypatch_session):
    cache = tmp_path_factory.mktemp("tiny-cache")
    monkeypatch_session.setenv("RAFTUNE_CACHE", str(cache))
    return cache


@pytest.fixture(scope="session")
def monkeypatch_session():
    with pytest.MonkeyPatch.context() as patch:
        yield patch


def mini_config(runs_dir: Path, *extra: str):
    return load_config(ROOT / "configs" / "demo-tiny.yaml", [*MINI_OVERRIDES, f"runs_dir={runs_dir}", "run=mini", *extra])


@pytest.fixture(scope="session")
def mini_run(tmp_path_factory, tiny_cache):
    """The whole pipeline once on the mini corpus; tests read its artifacts."""
    from raftune.pipeline import run_all

    config = mini_config(tmp_path_factory.mktemp("runs"))
    summary, timings = run_all(config)
    return config, summary


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextlib.contextmanager
def llama_server(gguf, n_ctx: int = 2048):
    """llama-cpp-python's OpenAI-compatible server on a free port, serving `gguf`; yields its /v1 URL."""
    port = free_port()
    process = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                                "--port", str(port), "--n_ctx", str(n_ctx), "--verbose", "false"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        for _ in range(120):
            try:
                urllib.request.urlopen(f"{url}/models", timeout=1)
                break
            except OSError:
                assert process.poll() is None, "llama_cpp.server exited"
                time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        process.wait(timeout=30)
