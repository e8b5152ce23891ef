"""Shared fixtures: a mini corpus (tests/fixtures/mini) and a tiny model small enough to build in seconds."""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import threading
import time
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


# the data formats every data input takes (raftune.data.formats, README "Your own documents and data")
FORMATS = ["json", "jsonl", "arrow", "disk", "parquet"]


def write_data(path: Path, rows: list[dict], container: str) -> Path:
    """`rows` in one of FORMATS at `path` (its suffix replaced); returns the file or folder written."""
    from datasets import Dataset

    if container == "json":
        path = path.with_suffix(".json")
        path.write_text(json.dumps(rows, ensure_ascii=False), encoding="utf-8")
    elif container == "jsonl":
        path = path.with_suffix(".jsonl")
        path.write_text("\n".join(json.dumps(r, ensure_ascii=False) for r in rows), encoding="utf-8")
    elif container == "parquet":
        path = path.with_suffix(".parquet")
        Dataset.from_list(rows).to_parquet(str(path))
    else:
        Dataset.from_list(rows).save_to_disk(str(path))
        if container == "arrow":  # the Arrow stream file inside the folder, as the seed shipped data.arrow
            path = next(path.glob("*.arrow"))
    return path


def mini_config(runs_dir: Path, *extra: str):
    return load_config(ROOT / "configs" / "demo-tiny.yaml", [*MINI_OVERRIDES, f"runs_dir={runs_dir}", "run=mini", *extra])


@pytest.fixture(scope="session")
def mini_run(tmp_path_factory, tiny_cache):
    """The whole pipeline once on the mini corpus; tests read its artifacts."""
    from raftune.pipeline import run_all

    config = mini_config(tmp_path_factory.mktemp("runs"))
    summary, timings = run_all(config)
    return config, summary


def copy_run(mini_run, tmp_path) -> Path:
    """A copy of the session's mini run (modification times kept), for a test that runs a stage again: the session's
    run stays as every other test reads it."""
    config, _ = mini_run
    shutil.copytree(config.runs_dir, tmp_path / "runs")
    return tmp_path / "runs"


def assert_f16_gguf_passes_the_fidelity_gate(config, folder: Path, out: Path) -> None:
    """llama.cpp's converter on a packaged base's HF folder, then the fidelity report on two test prompts."""
    from raftune.data.retrieval import build_retriever
    from raftune.export import fidelity
    from raftune.export.stage import export
    from raftune.models import load_tokenizer

    gguf = out / f"{folder.name}-f16.gguf"
    export(folder, gguf, "f16")
    prompts = fidelity.fidelity_prompts(load_tokenizer(str(folder)), config.evaluate.testset, build_retriever(config), 1, 2)
    report = fidelity.compare(folder, gguf, prompts, greedy_tokens=8)
    assert report["tokenization_match"] and report["control_tokens_parsed"] and not fidelity.gate(report)
    assert report["nmse"] < 1e-4 and report["top1_agreement"] >= 0.99


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


def quote_question(prompt: str) -> str:
    """A RAFT-shaped answer that quotes the prompt's question."""
    return f"##begin_quote##{prompt.rsplit('Question: ', 1)[-1]}##end_quote##\n<ANSWER>: ja"


class ChatStub:
    """An OpenAI-compatible chat-completions endpoint at `url`: answers each request with `reply(first message)`, and
    fails (HTTP 503) once `fail_after` answers have been given; counts requests and the Authorization headers seen."""

    def __init__(self, reply=quote_question):
        self.requests, self.answered, self.fail_after, self.keys, self.reply = 0, 0, None, set(), reply
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests += 1
                stub.keys.add(self.headers.get("Authorization"))
                if stub.fail_after is not None and stub.answered >= stub.fail_after:
                    self.send_response(503)
                    self.end_headers()
                    return
                stub.answered += 1
                content = stub.reply(body["messages"][0]["content"])
                data = json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": body["model"],
                                   "choices": [{"index": 0, "finish_reason": "stop",
                                                "message": {"role": "assistant", "content": content}}],
                                   "usage": {"prompt_tokens": 10, "completion_tokens": 3, "total_tokens": 13}}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def chat_stub():
    server = ChatStub()
    yield server
    server.server.shutdown()
