"""Providers: an OpenAI-compatible endpoint (a stub server here: retries, a clear error, nothing lost, the key never
written), and on the mini run's tiny models: batched HF generation, base + adapter, the answer cache, and
llama.cpp's server answering like the GGUF in-process."""

import dataclasses
import json

import pytest

from raftune import RaftuneError
from raftune.evaluate import providers, stage
from raftune.evaluate.providers import GGUFProvider, HFProvider
from raftune.data.testset import load_testset

from conftest import MINI, copy_run, free_port, llama_server, mini_config

SECRET = "sk-eval-0123456789-never-write-me"


def endpoint_config(tmp_path, *models):
    config = mini_config(tmp_path / "runs", "evaluate.run_models=false", "evaluate.recorded=[]")
    config.evaluate.models = [{"kind": "openai", "model": "stub", "api_key_env": "STUB_KEY", "max_retries": 1,
                               "concurrency": 1, **m} for m in models]
    return config


def answers_of(config):
    return [json.loads(line) for line in (config.stage_dir("evaluate") / "answers.jsonl").read_text().splitlines()]


def test_endpoint_answers_are_scored_and_the_key_stays_in_the_environment(chat_stub, tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_KEY", SECRET)
    config = endpoint_config(tmp_path, {"name": "api", "base_url": chat_stub.url})
    summary = stage.run(config)
    assert list(summary.index) == ["api", "extractive-baseline"] and chat_stub.requests == 8
    assert chat_stub.keys == {f"Bearer {SECRET}"}
    rows = [r for r in answers_of(config) if r["model"] == "api"]
    assert len(rows) == 8 and all(r["new_tokens"] == 3 and r["seconds"] > 0 and r["tokens_per_s"] > 0 for r in rows)
    # the stub quotes the question, which is not in the context: the hallucination check catches every quote
    assert summary.loc["api", "quote_grounding"] == 0.0
    for path in tmp_path.rglob("*"):
        if path.is_file() and path.suffix != ".parquet":
            assert SECRET not in path.read_text(errors="ignore"), path


def test_unreachable_endpoint_retries_then_fails_clearly_keeping_earlier_answers(chat_stub, tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_KEY", SECRET)
    dead = f"http://127.0.0.1:{free_port()}/v1"
    config = endpoint_config(tmp_path, {"name": "api", "base_url": chat_stub.url}, {"name": "dead", "base_url": dead})
    with pytest.raises(RaftuneError) as failure:
        stage.run(config)
    message = str(failure.value)
    assert message.startswith(f"model 'dead': endpoint {dead} unreachable after 1 retries (APIConnectionError")
    assert "0 of 8 answers of this model (and all earlier models') are kept in" in message and "\n" not in message
    assert chat_stub.requests == 8
    # the endpoint is back (here: the stub under the dead model's name): only its 8 answers are asked for
    config.evaluate.models[1]["base_url"] = chat_stub.url
    config.evaluate.models[1]["model"] = "stub-2"
    stage.run(config)
    assert chat_stub.requests == 16
    manifest = json.loads((config.stage_dir("evaluate") / "manifest.json").read_text())
    assert manifest["outputs"]["generated"] == 8


def test_failure_mid_run_keeps_every_answer_and_the_rerun_asks_only_for_the_rest(chat_stub, tmp_path, monkeypatch):
    monkeypatch.setenv("STUB_KEY", SECRET)
    chat_stub.fail_after = 3
    config = endpoint_config(tmp_path, {"name": "api", "base_url": chat_stub.url})
    with pytest.raises(RaftuneError, match=r"answered HTTP 503 after 1 retries .*; 3 of 8 answers of this model"):
        stage.run(config)
    cache = config.cache_dir() / "answers.jsonl"
    assert len(cache.read_text().splitlines()) == 3
    # the failing request and its one retry, and at most one more that a worker had already started; the rest were
    # cancelled
    assert 3 + 2 <= chat_stub.requests <= 3 + 2 * 2
    chat_stub.fail_after, before = None, chat_stub.requests
    stage.run(config)
    assert chat_stub.requests - before == 5 and len([r for r in answers_of(config) if r["model"] == "api"]) == 8


# --- the mini run's tiny models ---------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def prompts_of(mini_run):
    config, _ = mini_run
    items = load_testset(MINI / "testset.json")
    context, _ = stage.contexts(config, items)
    return lambda provider: [provider.render(i.question, [c["text"] for c in ctx]) for i, ctx in zip(items, context)]


def generate(provider, prompts):
    answers = dict(provider.generate(prompts))
    provider.close()
    return [answers[n] for n in range(len(prompts))]


def test_batched_generation_answers_like_one_prompt_at_a_time(mini_run, prompts_of):
    config, _ = mini_run
    spec = {"name": "ft", "kind": "hf", "path": str(config.stage_dir("merge") / "model")}
    single = HFProvider(spec, 12, batch_size=1)
    prompts = prompts_of(single)
    one = generate(single, prompts)
    batched = generate(HFProvider(spec, 12, batch_size=4), prompts)
    assert [a.batch_size for a in batched] == [4] * 8
    same = sum(a.text == b.text for a, b in zip(one, batched))
    assert same >= 7, [(a.text, b.text) for a, b in zip(one, batched)]


def test_base_plus_adapter_answers_like_the_merged_model(mini_run, prompts_of):
    """The adapter unmerged in full precision is the merged model up to rounding; in 4 bit it still answers."""
    config, _ = mini_run
    manifest = json.loads((config.stage_dir("merge") / "manifest.json").read_text())
    adapter = str(config.stage_dir("train") / "adapter")
    base = manifest["inputs"]["base"]
    merged_provider = HFProvider({"name": "m", "kind": "hf", "path": str(config.stage_dir("merge") / "model")}, 12, 8)
    merged = generate(merged_provider, prompts_of(merged_provider))
    unmerged_provider = HFProvider({"name": "a", "kind": "hf", "path": base, "adapter": adapter}, 12, 8)
    unmerged = generate(unmerged_provider, prompts_of(unmerged_provider))
    if manifest["outputs"].get("method", "pristine").startswith("pristine"):
        assert sum(a.text == b.text for a, b in zip(merged, unmerged)) >= 6
    four_bit = HFProvider({"name": "q", "kind": "hf", "path": base, "adapter": adapter, "load_in_4bit": True}, 12, 8,
                          config.quantization)
    answers = generate(four_bit, prompts_of(four_bit))
    assert len(answers) == 8 and all(0 < a.new_tokens <= 12 for a in answers)
    assert four_bit.identity != unmerged_provider.identity  # cached apart


def test_rerun_regenerates_nothing(mini_run, tmp_path):
    """The mini run's evaluation again: every answer comes from the cache, the table is the same. In a copy of the
    run, evaluated once there (the cache keys on the models' paths, which the copy moved)."""
    config, summary = mini_config(copy_run(mini_run, tmp_path)), mini_run[1]
    stage.run(config)
    before = answers_of(config)
    again = stage.run(config)
    manifest = json.loads((config.stage_dir("evaluate") / "manifest.json").read_text())
    assert manifest["outputs"]["generated"] == 0
    assert [r["answer"] for r in answers_of(config)] == [r["answer"] for r in before]
    assert again[["keyword_score", "rouge_l", "weighted"]].equals(summary[["keyword_score", "rouge_l", "weighted"]])


def test_llama_cpp_server_answers_like_the_gguf_in_process(mini_run, prompts_of, tmp_path):
    """api: completions sends raftune's rendered prompt, so the server's answers are the in-process GGUF's."""
    config, _ = mini_run
    gguf, tokenizer = config.stage_dir("export") / "model-f16.gguf", str(config.stage_dir("merge") / "model")
    with llama_server(gguf, n_ctx=4096) as url:
        local = GGUFProvider({"name": "g", "kind": "gguf", "path": str(gguf), "tokenizer": tokenizer}, 12, 8)
        expected = [a.text for a in generate(local, prompts_of(local))]
        remote_config = dataclasses.replace(config, runs_dir=str(tmp_path), evaluate=dataclasses.replace(
            config.evaluate, run_models=False, recorded=[], models=[
                {"name": "server", "kind": "openai", "base_url": url, "model": "tiny", "api": "completions",
                 "tokenizer": tokenizer, "extra_body": {"repeat_penalty": 1.0}}]))
        stage.run(remote_config)
        got = [r["answer"] for r in answers_of(remote_config) if r["model"] == "server"]
    assert sum(a == b for a, b in zip(expected, got)) >= 7, list(zip(expected, got))


def test_gguf_provider_opens_the_gguf_once_with_room_for_its_batch(mini_run, prompts_of, monkeypatch):
    """The HF tokenizer sizes the context before the first open: no small context opened only to count tokens."""
    config, _ = mini_run
    gguf, tokenizer = config.stage_dir("export") / "model-f16.gguf", str(config.stage_dir("merge") / "model")
    opened, real_open = [], providers.open_gguf

    def counting_open(path, **kwargs):
        opened.append(kwargs)
        return real_open(path, **kwargs)

    monkeypatch.setattr(providers, "open_gguf", counting_open)
    local = GGUFProvider({"name": "g", "kind": "gguf", "path": str(gguf), "tokenizer": tokenizer}, 12, 8)
    prompts = prompts_of(local)
    answers = list(local.generate(prompts))
    local.close()
    assert len(answers) == len(prompts) and len(opened) == 1
    # each of the 8 sequences gets the multiple of 256 positions llama.cpp would round it to
    assert opened[0]["n_seq_max"] == 8 and opened[0]["n_ctx"] % (8 * 256) == 0
