"""Serving overhead of `raftune serve`: time to first token and tokens/s through its OpenAI-compatible API, for one
request and for 4 concurrent ones, side by side with llama.cpp generating the same prompts in-process.

    .venv/bin/python bench/serve_latency.py --config configs/demo-tiny.yaml [--gguf FILE] [--tokenizer DIR] [key=value ...]

The server is started as users start it (`raftune serve`, a subprocess on a free local port) and asked with the
`openai` client, streamed. The baseline is llama-cpp-python's own streamed generation of the identical prompt tokens
(the assistant's `prepare`: same retrieval, same renderer, same sampling, the same llama.cpp threads as `raftune serve`
uses, every core but one; `Assistant.stream`, which is
llama-cpp-python's streamed `create_completion` without HTTP, queue or threads), in this process, never at the same
time as the server generates. Each test-set question is asked of both, alternately, so a question's prompt is new to
each llama.cpp (no prompt cache advantage on either side).

  TTFT       seconds from sending the request to the first answer token (served) / from calling llama.cpp (baseline);
             median over the questions
  tokens/s   answer tokens after the first, per second of generating them; median over the questions
  4 at once  the server answers one request at a time (llama.cpp has one context): the 4 requests' total answer
             tokens per second of wall time, against the same 4 generations run one after another in-process
Overhead = 1 - served / baseline tokens/s (target: under 10 %). llama.cpp's threads meet at a barrier after every
operation, so on a machine busy with other work one generation can be many times slower than the next: the load
average is printed with the results, and only numbers measured on an otherwise idle machine tell the overhead.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time

import httpx2 as httpx  # the HTTP client the pinned openai package brings
from openai import OpenAI

from raftune.config import load_config
from raftune.data.testset import load_testset
from raftune.serve.assistant import Assistant, serving_threads


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def direct(assistant: Assistant, question: str, max_tokens: int) -> dict:
    """llama.cpp's own streamed generation of the prompt the server builds for `question`."""
    prepared = assistant.prepare(question, max_tokens)
    started = time.perf_counter()
    first = None
    for piece, _, tokens in assistant.stream(prepared):  # llama-cpp-python's streamed create_completion
        first = first or (time.perf_counter() if piece else None)
    end = time.perf_counter()
    return {"ttft": first - started, "tokens": tokens, "decode_s": end - first, "wall": end - started}


def served(client: OpenAI, question: str, max_tokens: int, started: float | None = None) -> dict:
    started = started or time.perf_counter()
    first, count = None, 0
    for chunk in client.chat.completions.create(model="served", stream=True, max_tokens=max_tokens,
                                                messages=[{"role": "user", "content": question}]):
        if chunk.choices and chunk.choices[0].delta.content:
            first = first or time.perf_counter()
        if chunk.usage:
            count = chunk.usage.completion_tokens
    end = time.perf_counter()
    return {"ttft": first - started, "tokens": count, "decode_s": end - first, "wall": end - started}


def rate(runs: list[dict]) -> float:
    """Median over the requests of answer tokens after the first, per second of generating them."""
    return statistics.median((r["tokens"] - 1) / r["decode_s"] for r in runs)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", required=True)
    parser.add_argument("--gguf")
    parser.add_argument("--tokenizer")
    parser.add_argument("--questions", type=int, default=8, help="test-set questions asked one at a time")
    parser.add_argument("--max-tokens", type=int, default=128)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    config = load_config(args.config, args.overrides)
    questions = list(dict.fromkeys(i.question for i in load_testset(config.evaluate.testset)))
    assert len(questions) >= args.questions + 4, "the test set has too few questions for this benchmark"

    assistant = Assistant(config, args.gguf, args.tokenizer, threads=serving_threads())  # as `raftune serve` runs it
    load = os.getloadavg()
    port = free_port()
    extra = [f for flag, value in (("--gguf", args.gguf), ("--tokenizer", args.tokenizer)) if value
             for f in (flag, value)]
    server = subprocess.Popen([sys.executable, "-m", "raftune", "serve", "--config", args.config, *args.overrides,
                               *extra, "--port", str(port)], stdout=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        for _ in range(600):
            try:
                httpx.get(f"{url}/v1/models", timeout=1)
                break
            except httpx.TransportError:
                assert server.poll() is None, "raftune serve exited"
                time.sleep(0.2)
        client = OpenAI(base_url=f"{url}/v1", api_key="unused", max_retries=0, timeout=600)
        served(client, questions[-1], 8)  # warm-up: the server's first request
        direct(assistant, questions[-1], 8)

        one_direct, one_served = [], []
        for n, question in enumerate(questions[:args.questions]):  # alternate who goes first
            if n % 2:
                one_served.append(served(client, question, args.max_tokens))
            one_direct.append(direct(assistant, question, args.max_tokens))
            if not n % 2:
                one_served.append(served(client, question, args.max_tokens))
        batch = questions[args.questions:args.questions + 4]
        four_direct = [direct(assistant, q, args.max_tokens) for q in batch]
        four_served, threads = [], []
        started = time.perf_counter()
        for question in batch:
            threads.append(threading.Thread(target=lambda q=question: four_served.append(
                served(client, q, args.max_tokens, started))))
            threads[-1].start()
        for thread in threads:
            thread.join()
        four_wall = time.perf_counter() - started
    finally:
        server.terminate()
        server.wait(timeout=30)

    assert [r["tokens"] for r in one_direct] == [r["tokens"] for r in one_served], "different answers"
    tokens_direct, tokens_served = rate(one_direct), rate(one_served)
    ttft_direct = statistics.median(r["ttft"] for r in one_direct)
    ttft_served = statistics.median(r["ttft"] for r in one_served)
    total = sum(r["tokens"] for r in four_served)
    four_rate_served = total / four_wall
    four_rate_direct = sum(r["tokens"] for r in four_direct) / sum(r["wall"] for r in four_direct)
    print(f"load average {load[0]:.1f} before, {os.getloadavg()[0]:.1f} after, on {os.cpu_count()} cores")
    print(f"GGUF {assistant.gguf} ({assistant.gguf.stat().st_size / 1e6:.1f} MB), {len(one_direct)} questions, "
          f"up to {args.max_tokens} answer tokens, mean {statistics.mean(r['tokens'] for r in one_direct):.0f}")
    print(f"1 request:     TTFT {ttft_served * 1000:.0f} ms served vs {ttft_direct * 1000:.0f} ms llama.cpp "
          f"(ratio {ttft_served / ttft_direct:.2f}); {tokens_served:.1f} tokens/s served vs {tokens_direct:.1f} "
          f"llama.cpp (ratio {tokens_served / tokens_direct:.3f}, overhead {1 - tokens_served / tokens_direct:.1%})")
    print(f"4 concurrent:  {four_rate_served:.1f} tokens/s in all served vs {four_rate_direct:.1f} llama.cpp one "
          f"after another (ratio {four_rate_served / four_rate_direct:.3f}, overhead "
          f"{1 - four_rate_served / four_rate_direct:.1%}); TTFT first {min(r['ttft'] for r in four_served):.2f} s, "
          f"last {max(r['ttft'] for r in four_served):.2f} s (queued behind the others)")


if __name__ == "__main__":
    main()
