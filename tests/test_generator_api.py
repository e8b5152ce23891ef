"""The API-backed builder against a real OpenAI-compatible server: llama-cpp-python's own, serving the tiny GGUF.

An interrupted build (Ctrl-C after three answers) and its rerun together call the API once per question, and the
API key never reaches a file of the run."""

import json

import pytest

from raftune.data import stage as data_stage
from raftune.data.generators import ChatGenerator, ResponseCache

from conftest import llama_server, mini_config

SECRET = "sk-test-0123456789-never-write-me"


@pytest.fixture(scope="module")
def server(mini_run):
    config, _ = mini_run
    with llama_server(config.stage_dir("export") / "model-f16.gguf") as url:
        yield url


def test_interrupted_api_build_resumes_without_repeating_calls(server, tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    config = mini_config(tmp_path, "data.generator=openai", "data.generator_model=tiny", f"data.generator_base_url={server}",
                         "data.generator_max_tokens=16", "data.rows_per_question=1")
    questions = len(json.loads(open(config.data.qac).read()))

    real_ask = ChatGenerator._ask
    answered = []

    def ctrl_c_after_three(self, prompt):
        if self.calls == 3 and self.cache.get(ResponseCache.key(self.model, prompt)) is None:
            raise KeyboardInterrupt
        reply = real_ask(self, prompt)
        answered.append(reply)
        return reply

    monkeypatch.setattr(ChatGenerator, "_ask", ctrl_c_after_three)
    with pytest.raises(KeyboardInterrupt):
        data_stage.run(config)
    cache = config.cache_dir() / "generator.jsonl"
    assert len(cache.read_text().splitlines()) == 3 == len(answered)
    assert not (config.stage_dir("data") / "manifest.json").exists()

    monkeypatch.setattr(ChatGenerator, "_ask", real_ask)
    data_stage.run(config)
    manifest = json.loads((config.stage_dir("data") / "manifest.json").read_text())
    assert manifest["outputs"]["generator_calls"] == questions - 3
    assert len(cache.read_text().splitlines()) == questions

    data_stage.run(config)  # everything cached: no call at all
    assert json.loads((config.stage_dir("data") / "manifest.json").read_text())["outputs"]["generator_calls"] == 0

    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path


def test_generated_questions_are_parsed_from_lines(tmp_path):
    replies = iter(["1. Wann endet die Frist?\nHier ist Text ohne Frage\n- Was kostet es?", "Antwort"])
    generator = ChatGenerator("openai", "m", lambda prompt: next(replies), ResponseCache(tmp_path / "c.jsonl"))

    class Chunk:
        text = "Die Frist endet am 1. Mai. Es kostet 20 Euro."

    assert generator.questions(Chunk, 2) == [{"question": "Wann endet die Frist?", "answer": None},
                                             {"question": "Was kostet es?", "answer": None}]
    assert generator.calls == 1


def test_local_transformers_generator_writes_the_answers(mini_run, tmp_path):
    """data.generator=transformers: a local model folder (here the run's merged tiny model) answers every question."""
    config, _ = mini_run
    local = mini_config(tmp_path, "data.generator=transformers", f"data.generator_model={config.stage_dir('merge') / 'model'}",
                        "data.generator_max_tokens=8", "data.rows_per_question=1")
    data_stage.run(local)
    manifest = json.loads((local.stage_dir("data") / "manifest.json").read_text())
    assert manifest["outputs"]["generator_calls"] == len(json.loads(open(local.data.qac).read()))
