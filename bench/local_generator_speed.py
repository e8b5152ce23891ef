"""The local generator's speed: requests decoded together against one at a time, on the same chunks.

Baseline: llama-cpp-python's own grammar-held completion, one request at a time, which masks the whole vocabulary
with the grammar on every step. Against it, raftune's decoding (`raftune.llama_runtime.gguf_generate`: the greedy
token checked against the grammar first) with `data.generator_batch_size: 1` and with the config's batch size. Each
takes a config's local generator (default `configs/seed-pdfs-local-qwen.yaml`: Qwen2.5-Coder-1.5B on the seed team's
PDFs), a fresh reply cache, and the same first `--chunks` chunks of its corpus, after one warm-up chunk that opens the
model. Prints seconds per chunk, the ratios, and how many replies are the same text as the baseline's (llama.cpp's
matrix products round a batch of rows differently from one row, so a near-tie can go the other way).

    .venv/bin/python bench/local_generator_speed.py [--config configs/seed-pdfs-local-qwen.yaml] [--chunks 16]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import tempfile
import time
from pathlib import Path

from raftune.chat import render_request
from raftune.config import load_config
from raftune.data.corpus import corpus_chunks
from raftune.data.generators import local_gguf, make_generator
from raftune.gguf_file import gguf_chat_template
from raftune.llama_runtime import gguf_tokens, open_gguf


def masked_every_step(data, chunks, warm_up, requests) -> tuple[float, list[str]]:
    """(seconds per chunk, replies) of llama-cpp-python's create_completion with the grammar, one request at a time."""
    from llama_cpp import LlamaGrammar

    path = local_gguf(data.generator_model)[1]()
    llm, template = open_gguf(path, n_threads=data.generator_threads), gguf_chat_template(path)

    def ask(request, schema):
        grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        reply = llm.create_completion(gguf_tokens(llm, render_request(template, request)), temperature=0.0, top_k=1,
                                      max_tokens=data.generator_max_tokens, repeat_penalty=1.0, grammar=grammar)
        return reply["choices"][0]["text"]

    for _, request, schema in requests(warm_up):
        ask(request, schema)
    start = time.perf_counter()
    out = [ask(request, schema) for chunk in chunks for _, request, schema in requests(chunk)]
    return (time.perf_counter() - start) / len(chunks), out


def replies(data, chunks, warm_up, batch_size: int, cache: Path) -> tuple[float, list[str]]:
    """(seconds per chunk, the replies in request order) of a generator decoding `batch_size` chunks' requests together."""
    generator = make_generator(dataclasses.replace(data, generator_batch_size=batch_size), cache)
    generator.prefetch([warm_up], data.questions_per_chunk)
    start = time.perf_counter()
    for i in range(0, len(chunks), batch_size):
        generator.prefetch(chunks[i:i + batch_size], data.questions_per_chunk)
    seconds = (time.perf_counter() - start) / len(chunks)
    asked = [r for chunk in chunks for r in generator.requests(chunk, data.questions_per_chunk)]
    return seconds, [generator.cache.get(generator.key(request, schema)) for _, request, schema in asked]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/seed-pdfs-local-qwen.yaml")
    parser.add_argument("--chunks", type=int, default=16)
    args = parser.parse_args(argv)
    data = load_config(args.config, []).data
    every = corpus_chunks(data)
    chunks, warm_up = every[:args.chunks], every[args.chunks]
    with tempfile.TemporaryDirectory() as tmp:
        alone, one_by_one = replies(data, chunks, warm_up, 1, Path(tmp) / "alone.jsonl")
        together, batched = replies(data, chunks, warm_up, data.generator_batch_size, Path(tmp) / "together.jsonl")
        requests = make_generator(data, Path(tmp) / "unused.jsonl").requests
    baseline, reference = masked_every_step(data, chunks, warm_up, lambda chunk: requests(chunk, data.questions_per_chunk))
    same = lambda got: f"{sum(a == b for a, b in zip(reference, got))} of {len(got)} replies the baseline's text"
    print(f"{data.generator_model} on {len(chunks)} chunks of {data.corpus}, {data.questions_per_chunk} question(s) each")
    print(f"llama-cpp-python, grammar masking every step, one at a time: {baseline:6.1f} s a chunk (baseline)")
    print(f"raftune, greedy token checked first, one at a time:          {alone:6.1f} s a chunk, "
          f"{baseline / alone:.2f}x, {same(one_by_one)}")
    print(f"raftune, {data.generator_batch_size} chunks' requests decoded together:               {together:6.1f} s a chunk, "
          f"{baseline / together:.2f}x, {same(batched)}")


if __name__ == "__main__":
    main()
