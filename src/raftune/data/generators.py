"""Question and chain-of-thought answer generators for the RAFT builder.

- `extractive` (the default): offline and deterministic. Questions come from the QAC triplets when there are any,
  otherwise one per chunk from its heading; the reasoning quotes the oracle sentence that best matches the
  question and answer, so every quote is verbatim in the context and every answer ends with `<ANSWER>:`.
- `openai`: any OpenAI-compatible chat API (OpenAI, vLLM, llama.cpp's server, ...). The key is read from the
  environment variable that `data.generator_api_key_env` names and is never written anywhere. The client retries
  with exponential backoff (`data.generator_max_retries`); every answer is appended to a cache file as soon as it
  arrives (keyed on endpoint, model and prompt), so a crash or Ctrl-C loses nothing and a rerun asks the API only for
  what is missing. An endpoint that stays unreachable ends the build with one line naming it and the cache.
- `transformers`: a local model folder or hub id with a chat template; same prompts, same cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

from raftune import RaftuneError
from raftune.answer import ANSWER_MARKER, BEGIN_QUOTE, END_QUOTE
from raftune.data.raft import extractive_answer, split_sentences
from raftune.manifest import strip_credentials

QUESTION_PROMPT = (
    "Lies den folgenden Abschnitt einer Prüfungs- oder Studienordnung und schreibe {n} Frage(n), die ein "
    "Studierender stellen könnte und die der Abschnitt beantwortet. Schreibe jede Frage in eine eigene Zeile, "
    "ohne Nummerierung und ohne weiteren Text.\n\nAbschnitt:\n{chunk}"
)
ANSWER_PROMPT = (
    "Beantworte die Frage mit Hilfe des Kontexts. Begründe Schritt für Schritt und zitiere die entscheidenden Sätze "
    f"wörtlich zwischen {BEGIN_QUOTE} und {END_QUOTE}. Schließe mit einer Zeile `{ANSWER_MARKER} ` und der kurzen "
    "Antwort.\n\nKontext:\n{oracle}\n\nFrage: {question}"
)


class ResponseCache:
    """An append-only JSONL of {"key", "response"}: each line is flushed and synced as soon as it is written."""

    def __init__(self, path: Path):
        self.path = path
        self.entries = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                except json.JSONDecodeError:
                    continue  # a line cut off by a crash: that call is simply made again
                self.entries[entry["key"]] = entry["response"]

    @staticmethod
    def key(model: str, prompt: str) -> str:
        """`model` names what answers (with its endpoint, for a served model); a URL's credentials are left out."""
        return hashlib.sha256(json.dumps([strip_credentials(model), prompt]).encode()).hexdigest()

    def get(self, key: str):
        return self.entries.get(key)

    def put(self, key: str, response: str) -> None:
        self.entries[key] = response
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as out:
            out.write(json.dumps({"key": key, "response": response}, ensure_ascii=False) + "\n")
            out.flush()
            os.fsync(out.fileno())


class ExtractiveGenerator:
    name = "extractive"
    calls = 0

    def questions(self, chunk, n: int) -> list[dict]:
        sentences = split_sentences(chunk.text)
        where = f"{chunk.section} ({chunk.document}, Seite {chunk.page})" if chunk.section else \
            f"{chunk.document}, Seite {chunk.page}"
        return [{"question": f"Was regelt {where}?", "answer": sentences[0]}][:n]

    def cot_answer(self, question: str, answer: str, oracle: str) -> str:
        return extractive_answer(question, answer, oracle)


class ChatGenerator:
    """Questions and reasoning answers from a chat model behind `complete(prompt) -> str`, cached. `model` is what the
    cache keys on: the model name, and the endpoint for a served one."""

    def __init__(self, name: str, model: str, complete, cache: ResponseCache):
        self.name, self.model, self.complete, self.cache = name, model, complete, cache
        self.calls = 0  # requests actually sent (cache misses)

    def _ask(self, prompt: str) -> str:
        key = ResponseCache.key(self.model, prompt)
        cached = self.cache.get(key)
        if cached is not None:
            return cached
        self.calls += 1
        try:
            response = self.complete(prompt)
        except RaftuneError as err:
            raise RaftuneError(f"{err}; the {len(self.cache.entries)} answers so far are kept in {self.cache.path}, "
                               f"a rerun asks only for the rest") from None
        self.cache.put(key, response)
        return response

    def questions(self, chunk, n: int) -> list[dict]:
        text = self._ask(QUESTION_PROMPT.format(n=n, chunk=chunk.text))
        lines = [re.sub(r"^\s*(\d+[.)]|[-*•])\s*", "", line).strip() for line in text.splitlines()]
        return [{"question": line, "answer": None} for line in lines if line.endswith("?")][:n]

    def cot_answer(self, question: str, answer: str | None, oracle: str) -> str:
        return self._ask(ANSWER_PROMPT.format(oracle=oracle, question=question)).strip()


def api_error(err: Exception, who: str, url: str, retries: int) -> RaftuneError:
    """One line for a failed OpenAI-compatible request: who asked, which endpoint (without credentials), what
    happened. Used by the data generator and the evaluated `openai` models."""
    import openai

    if isinstance(err, openai.APIStatusError):
        what = f"answered HTTP {err.status_code}"
    elif isinstance(err, (openai.APIConnectionError, openai.APITimeoutError)):
        what = "unreachable"
    else:
        what = "failed"
    detail = strip_credentials(str(err).splitlines()[0][:200]) if str(err) else ""
    return RaftuneError(f"{who}: endpoint {strip_credentials(url)} {what} after {retries} retries "
                        f"({type(err).__name__}: {detail})")


OPENAI_URL = "https://api.openai.com/v1"


def openai_complete(base_url: str | None, model: str, api_key_env: str, max_retries: int, max_tokens: int):
    import openai

    base_url = base_url or OPENAI_URL
    key = os.environ.get(api_key_env)
    if key is None and "api.openai.com" in base_url:
        raise RaftuneError(f"data.generator=openai needs an API key in the environment variable {api_key_env}")
    client = openai.OpenAI(base_url=base_url, api_key=key or "not-needed", max_retries=max_retries, timeout=120)

    def complete(prompt: str) -> str:
        try:
            reply = client.chat.completions.create(model=model, messages=[{"role": "user", "content": prompt}],
                                                   temperature=0.0, max_tokens=max_tokens)
        except openai.OpenAIError as err:
            raise api_error(err, "data.generator_base_url", base_url, max_retries) from None
        return reply.choices[0].message.content or ""

    return complete


def transformers_complete(model_name: str, max_tokens: int):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_name)
    model = AutoModelForCausalLM.from_pretrained(model_name).eval()

    def complete(prompt: str) -> str:
        ids = tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True,
                                            return_tensors="pt", return_dict=True)
        with torch.no_grad():
            out = model.generate(**ids, max_new_tokens=max_tokens, do_sample=False)
        return tokenizer.decode(out[0, ids["input_ids"].shape[1]:], skip_special_tokens=True)

    return complete


def make_generator(cfg, cache_path: Path):
    """The generator a `data` config names."""
    if cfg.generator == "extractive":
        return ExtractiveGenerator()
    if not cfg.generator_model:
        raise RaftuneError(f"data.generator={cfg.generator} needs data.generator_model")
    if cfg.generator == "openai":
        complete = openai_complete(cfg.generator_base_url, cfg.generator_model, cfg.generator_api_key_env,
                                   cfg.generator_max_retries, cfg.generator_max_tokens)
        # the same model name on another server is another model
        model = json.dumps([cfg.generator_base_url or OPENAI_URL, cfg.generator_model])
    elif cfg.generator == "transformers":
        complete, model = transformers_complete(cfg.generator_model, cfg.generator_max_tokens), cfg.generator_model
    else:
        raise RaftuneError(f"data.generator must be extractive, openai or transformers, got '{cfg.generator}'")
    return ChatGenerator(cfg.generator, model, complete, ResponseCache(cache_path))
