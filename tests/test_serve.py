"""`raftune serve` and `raftune chat` on the mini run's GGUF, asked by real clients: the `openai` client, httpx,
a terminal (stdin) and headless Chromium."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

import httpx2 as httpx  # the HTTP client the pinned openai package brings
import numpy as np
import pytest
from openai import BadRequestError, OpenAI

from raftune import cli
from raftune.data.testset import load_testset
from raftune.serve.app import create_app, serving
from raftune.serve.assistant import MAX_QUESTION_CHARS, Assistant, choose_gguf

from conftest import MINI, MINI_OVERRIDES, ROOT, mini_config


def test_chunk_embeddings_are_computed_once_and_cached_beside_the_run(tmp_path):
    from raftune.data.retrieval import build_retriever

    config = mini_config(tmp_path / "runs")
    first = build_retriever(config)
    (cached,) = (tmp_path / "runs" / "mini" / "retrieval").glob("embeddings-*.npy")
    assert first.matrix.shape[0] == len(first.chunks)
    np.save(cached, first.matrix[::-1])  # a marked file: a later build must read it, not embed again
    assert (build_retriever(config).matrix == first.matrix[::-1]).all()

    corpus = tmp_path / "corpus"
    shutil.copytree(MINI / "corpus", corpus)
    changed = corpus / "ordnung.json"
    changed.write_text(changed.read_text(encoding="utf-8").replace("Anmeldefrist", "Meldefrist"), encoding="utf-8")
    config.data.corpus = str(corpus)
    build_retriever(config)
    assert len(list((tmp_path / "runs" / "mini" / "retrieval").glob("embeddings-*.npy"))) == 2


def cli_args(config) -> list[str]:
    """The command-line form of the mini run's recipe (as `mini_config` builds it)."""
    return ["--config", str(ROOT / "configs" / "demo-tiny.yaml"), *MINI_OVERRIDES, f"runs_dir={config.runs_dir}",
            "run=mini"]


@pytest.fixture(scope="module")
def served(mini_run):
    """The app on uvicorn in a thread, on a free port, answering with the run's default GGUF; one request may wait."""
    config, _ = mini_run
    assistant = Assistant(config)
    app = create_app(assistant, queue=1)
    with serving(app) as url:
        yield url, app, assistant


def client(url) -> OpenAI:
    return OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0)


def test_openai_client_gets_answer_and_sources_streamed_and_not(served, mini_run):
    url, _, assistant = served
    config, _ = mini_run
    question = load_testset(config.evaluate.testset)[0].question
    openai = client(url)
    assert [m.id for m in openai.models.list().data] == [assistant.name]

    reply = openai.chat.completions.create(model=assistant.name, messages=[
        {"role": "system", "content": "ignored"}, {"role": "user", "content": question}])
    answer = reply.choices[0].message.content
    sources = reply.model_extra["sources"]
    assert answer and reply.choices[0].finish_reason in {"stop", "length"}
    assert len(sources) == config.evaluate.top_k
    assert all(set(s) >= {"document", "page", "text", "score"} for s in sources)
    assert [s["score"] for s in sources] == sorted((s["score"] for s in sources), reverse=True)
    assert reply.model_extra["final_answer"] == (answer.split("<ANSWER>:", 1)[-1].strip())
    assert 0 < reply.usage.completion_tokens <= config.evaluate.max_new_tokens
    assert (reply.usage.completion_tokens == config.evaluate.max_new_tokens) == (reply.choices[0].finish_reason == "length")

    chunks = list(openai.chat.completions.create(model=assistant.name, stream=True,
                                                 messages=[{"role": "user", "content": question}]))
    streamed = "".join(c.choices[0].delta.content or "" for c in chunks)
    assert streamed.strip() == answer
    last = chunks[-1]
    assert last.choices[0].finish_reason == reply.choices[0].finish_reason
    assert last.model_extra["sources"] == sources and all(c.model_extra.get("sources") is None for c in chunks[:-1])


def test_served_answers_are_the_evaluated_answers(served, mini_run):
    """Same retrieval, renderer, GGUF and sampling: serve answers each test question as evaluate did."""
    url, _, assistant = served
    config, _ = mini_run
    model = f"finetuned-gguf-{assistant.gguf.name.removeprefix('model-').removesuffix('.gguf')}"
    evaluated = [json.loads(line) for line in (config.stage_dir("evaluate") / "answers.jsonl").read_text().splitlines()]
    evaluated = [row for row in evaluated if row["model"] == model]
    assert evaluated, f"no answers of {model} in the evaluation"
    for row in evaluated:
        result = assistant.answer(row["question"])
        assert result["prompt"] == row["prompt"]
        assert (result["answer"], result["completion_tokens"]) == (row["answer"], row["new_tokens"]), row["question"]
    served_reply = client(url).chat.completions.create(model="any", messages=[
        {"role": "user", "content": evaluated[0]["question"]}])
    assert served_reply.choices[0].message.content == evaluated[0]["answer"]


@pytest.mark.parametrize("body, message", [
    ({"messages": [{"role": "user", "content": "   "}]}, "the question is empty"),
    ({"messages": [{"role": "user", "content": "Frage " * (MAX_QUESTION_CHARS // 6 + 1)}]},
     f"at most {MAX_QUESTION_CHARS} are accepted"),
    ({"messages": [{"role": "assistant", "content": "Hallo"}]}, "no message with role 'user'"),
    ({"messages": [{"role": "user", "content": "Wie lange?"}], "max_tokens": 5000}, "exceeds the model's context"),
])
def test_bad_questions_get_400(served, body, message):
    url, _, _ = served
    response = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=60)
    assert response.status_code == 400
    assert message in response.json()["error"]["message"]


def test_openai_client_sees_400_for_an_empty_question(served):
    url, _, _ = served
    with pytest.raises(BadRequestError, match="the question is empty"):
        client(url).chat.completions.create(model="any", messages=[{"role": "user", "content": ""}])


def _health(url) -> dict:
    return httpx.get(f"{url}/health", timeout=10).json()


def _wait_idle(url) -> dict:
    for _ in range(200):
        health = _health(url)
        if health["admitted"] == 0:
            return health
        time.sleep(0.05)
    raise AssertionError(f"the server stays busy: {health}")


def test_full_queue_gets_503_and_queued_requests_are_answered(served):
    """The app admits 1 + queue = 2 requests. While the model is held (as by a long generation), two requests are
    admitted and wait, a third is refused with 503 at once; once the model is free, both waiting ones are answered."""
    url, app, _ = served
    body = {"messages": [{"role": "user", "content": "Wie lange dauert die Bearbeitungszeit?"}]}
    results = []
    with app.state.gate.model:
        workers = [threading.Thread(target=lambda: results.append(httpx.post(f"{url}/v1/chat/completions", json=body,
                                                                              timeout=120)))
                   for _ in range(2)]
        for worker in workers:
            worker.start()
        while _health(url)["admitted"] < 2:
            time.sleep(0.05)
        refused = httpx.post(f"{url}/v1/chat/completions", json=body, timeout=30)
        assert refused.status_code == 503 and "busy" in refused.json()["error"]["message"]
        assert not results  # still waiting for the model
    for worker in workers:
        worker.join(timeout=120)
    assert [r.status_code for r in results] == [200, 200]
    assert results[0].json()["choices"][0]["message"]["content"] == results[1].json()["choices"][0]["message"]["content"]
    _wait_idle(url)


def test_client_disconnect_mid_stream_frees_the_model(served):
    url, app, _ = served
    before = _health(url)["stopped_early"]
    body = {"messages": [{"role": "user", "content": "Wie lange dauert die Bearbeitungszeit?"}], "stream": True}
    with app.state.gate.model:  # the model is busy, so the stream is open but has produced no token yet
        with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=60) as response:
            first = next(response.iter_lines())
            assert json.loads(first.removeprefix("data: "))["choices"][0]["delta"]["role"] == "assistant"
        time.sleep(1.0)  # the client is gone; let the server see the disconnect
    health = _wait_idle(url)
    assert health["stopped_early"] == before + 1 and not health["generating"]
    answered = httpx.post(f"{url}/v1/chat/completions", json={**body, "stream": False}, timeout=60)
    assert answered.status_code == 200 and answered.json()["choices"][0]["message"]["content"]


def test_default_gguf_passed_and_a_failed_one_is_refused(mini_run, tmp_path, capsys):
    config, _ = mini_run
    chosen = choose_gguf(config)
    report = json.loads((chosen.parent / f"fidelity-{chosen.stem.removeprefix('model-')}.json").read_text())
    assert report["passed"]

    failed = tmp_path / "model.gguf"
    shutil.copy(chosen, failed)
    failed.with_suffix(".fidelity.json").write_text(json.dumps({"passed": False, "problems": ["NMSE 0.1 > 0.001"]}))
    assert cli.main(["serve", *cli_args(config), "--gguf", str(failed)]) == 2
    assert "fidelity report failed (NMSE 0.1 > 0.001)" in capsys.readouterr().err
    assert Assistant(config, str(failed), allow_failed=True).gguf == failed


def test_chat_answers_each_line_with_sources(mini_run, served):
    config, _ = mini_run
    _, _, assistant = served
    questions = [item.question for item in load_testset(config.evaluate.testset)[:2]]
    stdin = f"{questions[0]}\n\n{'x' * (MAX_QUESTION_CHARS + 1)}\n{questions[1]}\n"
    run = subprocess.run([sys.executable, "-m", "raftune", "chat", *cli_args(config)], input=stdin, text=True,
                         capture_output=True, timeout=300, env=os.environ)
    assert run.returncode == 0, run.stderr
    lines = run.stdout.splitlines()
    for question in questions:
        expected = assistant.answer(question)
        start = lines.index(expected["answer"].splitlines()[0])
        assert lines[start + len(expected["answer"].splitlines())] == f"=> {expected['final_answer']}"
    pages = [line for line in lines if line.startswith("  [")]
    assert len(pages) == 2 * config.evaluate.top_k and all(", page " in line for line in pages)
    assert sum("at most 2000 are accepted" in line for line in lines) == 1


def page_driver():
    """assets/screenshot.py: starts `raftune serve` and drives its web page for the README's picture and for these tests."""
    sys.path.insert(0, str(ROOT / "assets"))
    import screenshot

    return screenshot


@pytest.fixture
def serve_process(mini_run):
    """`raftune serve` as a user starts it, on a free port."""
    config, _ = mini_run
    with page_driver().raftune_serve(cli_args(config)) as url:
        yield url


def test_web_page_in_headless_chromium(mini_run, serve_process):
    """Type a question, see the answer stream in, the final answer and the quoted passages with their pages."""
    driver = page_driver()
    if not driver.CHROMIUM.is_file():
        pytest.skip(f"{driver.CHROMIUM} is missing: Debian's chromium package did not install (apt-get install chromium)")

    config, _ = mini_run
    question = load_testset(config.evaluate.testset)[0].question
    expected = httpx.post(f"{serve_process}/v1/chat/completions", timeout=60,
                          json={"messages": [{"role": "user", "content": question}]}).json()
    shown = driver.ask_page(serve_process, question)
    assert shown["model"] == expected["model"]
    assert shown["answer"] == expected["choices"][0]["message"]["content"]
    assert shown["final_answer"] == expected["final_answer"]
    source = expected["sources"][0]
    assert len(shown["sources"]) == len(expected["sources"])
    assert shown["sources"][0].startswith(f"[1] {source['document']}, Seite {source['page']}")
    assert shown["first_source_text"] == source["text"]
