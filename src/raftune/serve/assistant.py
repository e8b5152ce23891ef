"""The assistant's one answer path: retrieve the top-k passages, render `chat.render_prompt`, generate with the GGUF.

It is the path `raftune evaluate` measured: the same retriever (`build_retriever`), the same renderer, and
llama.cpp with the evaluation's GGUF sampling (greedy, no repetition penalty), so a served answer to a test-set
question is the evaluated answer. `raftune serve` (OpenAI-compatible API and web page) and `raftune chat`
(terminal) both answer through `Assistant`.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

from raftune import RaftuneError
from raftune.answer import final_answer
from raftune.chat import render_prompt
from raftune.data.retrieval import build_retriever
from raftune.evaluate.providers import GGUF_SAMPLING
from raftune.llama_runtime import gguf_tokens, open_gguf
from raftune.models import load_tokenizer

MAX_QUESTION_CHARS = 2000  # a question, not a document: the embedder reads 256 tokens of it anyway


class QuestionError(RaftuneError):
    """A question that cannot be answered as asked (empty, too long); the API answers it with HTTP 400."""


def fidelity_report(gguf: Path) -> dict | None:
    """The report written with a GGUF: `fidelity-<type>.json` beside the export stage's `model-<type>.gguf` (or
    its `.failed.gguf`), `<file>.fidelity.json` beside a file of `raftune export --model`."""
    candidates = [gguf.with_suffix(".fidelity.json")]
    stage_name = re.fullmatch(r"model-(.+?)(\.failed)?\.gguf", gguf.name)
    if stage_name:
        candidates.append(gguf.parent / f"fidelity-{stage_name.group(1)}.json")
    for path in candidates:
        if path.is_file():
            return json.loads(path.read_text(encoding="utf-8"))
    return None


def choose_gguf(config, gguf: str | None = None, allow_failed: bool = False) -> Path:
    """The named GGUF, refused if its fidelity report failed (unless allow_failed); by default the run's best GGUF
    that passed: highest top-1 agreement with the HF model, then lowest KL divergence."""
    if gguf is None:
        export = config.stage_dir("export")
        passing = [(report, path) for path in (export / f"model-{t}.gguf" for t in config.export.types)
                   if path.is_file() and (report := fidelity_report(path)) and report.get("passed")]
        if not passing:
            raise RaftuneError(f"no GGUF in {export} passed its fidelity report; run `raftune export` first, or "
                               f"name one with --gguf FILE")
        return max(passing, key=lambda rp: (rp[0]["top1_agreement"], -rp[0]["kl_mean"]))[1]
    path = Path(gguf)
    if not path.is_file():
        raise RaftuneError(f"--gguf {path}: no such file")
    report = fidelity_report(path)
    if (path.name.endswith(".failed.gguf") or (report and not report.get("passed", True))) and not allow_failed:
        why = "; ".join(report.get("problems", [])) if report else "the export renamed it .failed.gguf"
        raise RaftuneError(f"{path}: its fidelity report failed ({why}), so it would not answer like the evaluated "
                           f"model; pass --allow-failed to serve it anyway")
    return path


@dataclass
class Prepared:
    """A question made ready to generate: the exact prompt, its tokens and the passages it quotes."""
    question: str
    prompt: str
    tokens: list[int]
    sources: list[dict]
    max_tokens: int


def serving_threads() -> int:
    """llama.cpp threads for `raftune serve`: every core but one. The HTTP server and its clients need CPU for every
    streamed token, and llama.cpp's threads wait for each other after every operation, so one that shares its core
    with them stalls the others (SmolLM2 q8_0 on 2 cores: 32 tokens/s served with 2 threads, 53 with 1; RESULTS.md,
    "Serving latency")."""
    return max(1, len(os.sched_getaffinity(0)) - 1)


class Assistant:
    def __init__(self, config, gguf: str | None = None, tokenizer: str | None = None, allow_failed: bool = False,
                 threads: int | None = None):
        self.gguf = choose_gguf(config, gguf, allow_failed)
        tokenizer = Path(tokenizer or config.stage_dir("merge") / "model")
        if not tokenizer.is_dir():
            raise RaftuneError(f"no tokenizer folder at {tokenizer}: its chat template renders the prompts (the "
                               f"run's merged model); run `raftune merge` or pass --tokenizer DIR")
        self.tokenizer = load_tokenizer(str(tokenizer))
        self.retriever = build_retriever(config)
        self.top_k, self.max_new_tokens = config.evaluate.top_k, config.evaluate.max_new_tokens
        self.name = f"{config.run}-{self.gguf.name.removesuffix('.gguf')}"
        self.llm = open_gguf(self.gguf, n_threads=threads)  # the evaluation's context size (4096); threads None: every core

    def prepare(self, question: str, max_tokens: int | None = None) -> Prepared:
        if not isinstance(question, str) or not question.strip():
            raise QuestionError("the question is empty")
        if len(question) > MAX_QUESTION_CHARS:
            raise QuestionError(f"the question is {len(question)} characters long; at most {MAX_QUESTION_CHARS} "
                                f"are accepted")

        if max_tokens is not None and (not isinstance(max_tokens, int) or max_tokens < 1):
            raise QuestionError(f"max_tokens must be a positive integer, got {max_tokens!r}")
        max_tokens = max_tokens or self.max_new_tokens
        (scored,) = self.retriever.search_scored([question], self.top_k)
        prompt = render_prompt(self.tokenizer, question, [chunk.text for chunk, _ in scored])
        tokens = gguf_tokens(self.llm, prompt)
        if len(tokens) + max_tokens > self.llm.n_ctx():
            raise QuestionError(f"the prompt with its {self.top_k} passages is {len(tokens)} tokens; with "
                                f"{max_tokens} answer tokens it exceeds the model's context of {self.llm.n_ctx()}")
        sources = [{"document": c.document, "page": c.page, "section": c.section, "text": c.text,
                    "score": round(score, 4)} for c, score in scored]
        return Prepared(question, prompt, tokens, sources, max_tokens)

    def stream(self, prepared: Prepared):
        """(text piece, finish reason, answer tokens) as llama.cpp produces them; the last two are None but in the
        last item. Closing this generator stops the generation at once."""

        pieces = self.llm.create_completion(prepared.tokens, max_tokens=prepared.max_tokens, stream=True,
                                            **GGUF_SAMPLING)
        try:
            for chunk in pieces:
                choice = chunk["choices"][0]
                finish, tokens = choice["finish_reason"], None
                if finish is not None:
                    # streamed pieces are not tokens (a character split over tokens comes whole); the context holds
                    # prompt + answer, less the last answer token when the limit, not EOS, ended it
                    tokens = self.llm.n_tokens - len(prepared.tokens) + (finish == "length")
                yield choice["text"], finish, tokens
        finally:
            pieces.close()

    def answer(self, question: str, max_tokens: int | None = None) -> dict:
        prepared = self.prepare(question, max_tokens)
        text, finish, tokens = "", None, None
        for piece, finish, tokens in self.stream(prepared):
            text += piece
        return reply(prepared, text, finish, tokens)


def reply(prepared: Prepared, text: str, finish_reason: str, tokens: int) -> dict:
    """{answer, final_answer, sources, prompt} and the generation's facts, as every front end shows them."""

    answer = text.strip()  # as evaluate stores it
    return {"answer": answer, "final_answer": final_answer(answer), "sources": prepared.sources,
            "prompt": prepared.prompt, "finish_reason": finish_reason, "prompt_tokens": len(prepared.tokens),
            "completion_tokens": tokens}
