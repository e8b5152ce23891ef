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
- `local`: an instruct GGUF (a file, or a packaged one such as `qwen2.5-coder-1.5b`) through llama.cpp, offline.
  `questions_per_chunk` requests per chunk each ask for a question about one of its sentences as students ask it, in
  `question_styles` by turns and in the chunk's language, with the sentence of the chunk that answers it, a sentence
  of reasoning and the short answer; llama.cpp's grammar holds the reply to that JSON and the quote to the chunk's
  sentences. A row whose quote is not text of the chunk (after normalising whitespace and quote marks, as `raftune
  data clean` checks) is dropped, and so are cut-off replies, non-questions, empty answers and repeated questions:
  each drop is counted by reason in the data stage's manifest. Same cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import re

from collections import Counter
from collections.abc import Callable
from pathlib import Path

from raftune import RaftuneError
from raftune.answer import ANSWER_MARKER, BEGIN_QUOTE, END_QUOTE, reasoned_answer
from raftune.chat import render_request
from raftune.data.clean import is_question, quote_status
from raftune.data.formats import squash
from raftune.data.language import language, languages
from raftune.data.raft import extractive_answer, split_sentences
from raftune.manifest import strip_credentials
from raftune.packaged import PACKAGED_GGUFS, packaged_gguf

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


LOCAL_PROMPT = (
    "Du schreibst Übungsdaten für einen Assistenten, der Fragen zu Prüfungs- und Studienordnungen beantwortet.\n\n"
    "Abschnitt:\n{chunk}\n\nSchreibe eine Frage zu diesem Satz des Abschnitts, so wie Studierende sie stellen, "
    "{style}:\n{sentence}\n\nAntworte mit dem Satz des Abschnitts, der die Frage beantwortet (zitat), der Frage "
    "(frage), einem kurzen Satz, warum der Satz die Frage beantwortet (begruendung), und der Antwort in wenigen "
    "Wörtern (antwort). Schreibe {language}."
)
# No example questions: the 1.5B model asked them as they were, whatever the chunk said
STYLES = {
    "formal": "als vollständiger, höflicher Satz in der Sie-Form, wie in einer E-Mail an das Prüfungsamt",
    "colloquial": "kurz und locker in der Du-Form, wie im Chat unter Studierenden",
}
IN_LANGUAGE = {"de": "auf Deutsch", "en": "auf Englisch"}  # any other: "in der Sprache des Abschnitts"
# The model's own words: Latin script, no control characters (Qwen2.5 drifts into Chinese), and no quote mark or
# backslash, which JSON would have to escape
TEXT = {"type": "string", "pattern": "^[ -!#-\\[\\]-\u024f\u2013\u2014\u2018-\u201e\u20ac]+$"}
FIELDS = ("zitat", "frage", "begruendung", "antwort")  # the order the model writes them in
DROPS = {
    "unparsable": "the reply is no JSON of the asked shape (cut off at data.generator_max_tokens)",
    "not_a_question": "meta-text instead of a question, or no question mark",
    "no_answer": "the short answer is empty",
    "quote_not_in_chunk": "the quote is not text of the chunk, even after normalising whitespace and quote marks",
    "duplicate": "the same question as an earlier row",
}


def reply_schema(sentences: list[str]) -> dict:
    """The quote first, one of the chunk's `sentences` (Qwen2.5-Coder 1.5B, free to write any quote, wrote sentences
    that are not in the chunk), then question, reasoning and answer."""
    return {"type": "object", "required": list(FIELDS),
            "properties": {"zitat": {"enum": list(sentences)}, **{name: TEXT for name in FIELDS[1:]}}}


class LocalGenerator:
    """Questions with their reasoning answers from `complete(request, schema) -> str` (llama.cpp on a GGUF), one
    cached request per question; `counts` keeps the rows kept and dropped by reason, `report()` them for the manifest.

    A chunk's questions take the styles in turn and the chunk's sentences in turn, one sentence named per request:
    asked for three questions in one reply, the 1.5B model wrote the first one three times, and shown the questions
    it had asked, it asked them again."""

    name = "local"

    def __init__(self, model: str, complete, cache: ResponseCache, styles: list[str], batch_size: int = 1):
        self.model, self.complete, self.cache, self.styles, self.batch_size = model, complete, cache, styles, batch_size
        self.calls = 0
        self.counts = Counter()
        self.seen: set[str] = set()
        self.kept: list[dict] = []

    def request(self, chunk, style: str, sentence: str) -> tuple[str, dict]:
        """The chunk comes first, then the sentence to ask about and the style."""
        where = IN_LANGUAGE.get(language(chunk.text), "in der Sprache des Abschnitts")
        prompt = LOCAL_PROMPT.format(chunk=chunk.text, style=STYLES[style], sentence=sentence, language=where)
        return prompt, reply_schema(split_sentences(chunk.text))

    def requests(self, chunk, n: int) -> list[tuple[str, str, dict]]:
        """(style, request, schema) of the chunk's n questions."""
        sentences = split_sentences(chunk.text)
        styles = [self.styles[i % len(self.styles)] for i in range(n)]
        return [(style, *self.request(chunk, style, sentences[i % len(sentences)])) for i, style in enumerate(styles)]

    def key(self, request: str, schema: dict) -> str:
        return ResponseCache.key(self.model, json.dumps([request, schema], ensure_ascii=False))

    def prefetch(self, chunks, n: int) -> None:
        """Asks the requests of `chunks` that are not cached yet, all together, and caches the replies."""
        asked = [(request, schema) for chunk in chunks for _, request, schema in self.requests(chunk, n)
                 if self.cache.get(self.key(request, schema)) is None]
        if asked:
            self.calls += len(asked)
            for (request, schema), response in zip(asked, self.complete(asked)):
                self.cache.put(self.key(request, schema), response)

    def questions(self, chunk, n: int) -> list[dict]:
        self.prefetch([chunk], n)
        rows = []
        for style, request, schema in self.requests(chunk, n):
            item = parse_reply(self.cache.get(self.key(request, schema)))
            reason, row = ("unparsable", None) if item is None else self.check(item, chunk.text, style)
            self.counts[reason] += 1
            if row is not None:
                rows.append(row)
        self.kept += rows
        return rows

    def check(self, item: dict, chunk_text: str, style: str) -> tuple[str, dict | None]:
        """("kept" or the reason it is dropped, the row). A quote found only after normalising is replaced by the
        chunk's exact span."""
        question, answer = item["frage"].strip(), item["antwort"].strip()
        if not is_question(question):
            return "not_a_question", None
        if not answer:
            return "no_answer", None
        status, exact = quote_status(item["zitat"], [chunk_text])
        if status == "missing":
            return "quote_not_in_chunk", None
        if squash(question).lower() in self.seen:
            return "duplicate", None
        self.seen.add(squash(question).lower())
        quote = exact if exact is not None else item["zitat"].strip()
        self.counts["quotes_repaired"] += exact is not None
        return "kept", {"question": question, "answer": answer, "style": style,
                        "cot_answer": reasoned_answer(quote, item["begruendung"].strip(), answer)}

    def cot_answer(self, question: str, answer: str, oracle: str) -> str:
        raise RaftuneError("data.generator=local writes questions with their answers from the corpus; set data.qac: null")

    def report(self) -> dict:
        written = sum(self.counts[k] for k in ("kept", *DROPS))
        return {"rows_written": written, "kept": self.counts["kept"],
                "dropped": {reason: self.counts[reason] for reason in DROPS},
                "quotes_repaired": self.counts["quotes_repaired"],
                "languages": languages([r["question"] for r in self.kept], [r["cot_answer"] for r in self.kept])}


def parse_reply(text: str) -> dict | None:
    """The reply's fields, or None when it is no JSON of that shape (a reply cut off by the token limit)."""
    try:
        item = json.loads(text)
    except json.JSONDecodeError:
        return None
    ok = isinstance(item, dict) and all(isinstance(item.get(field), str) for field in FIELDS)
    return item if ok else None


def local_gguf(model: str) -> tuple[str, Callable[[], Path]]:
    """(the cache's name for the model, a function giving its GGUF path): a packaged model is assembled on first
    use only, so a rerun whose answers are all cached needs none of its parts."""
    if model in PACKAGED_GGUFS:
        return json.dumps([model, PACKAGED_GGUFS[model].sha256]), lambda: packaged_gguf(model)
    path = Path(model)
    if not path.is_file():
        raise RaftuneError(f"data.generator_model={model}: not a GGUF file nor a packaged model "
                           f"({', '.join(PACKAGED_GGUFS)})")
    return json.dumps([str(path.resolve()), path.stat().st_size, path.stat().st_mtime_ns]), lambda: path


def llama_complete(gguf, max_tokens: int, threads: int | None = None, batch_size: int = 1, n_ctx: int = 4096):
    """`complete([(request, schema), ...]) -> replies` on the GGUF that `gguf()` gives, rendered with its own chat
    template, up to `batch_size` requests decoded together in `n_ctx` cells each; the model opens on the first call."""
    from raftune.gguf_file import gguf_chat_template
    from raftune.llama_runtime import json_completions, open_gguf

    opened = {}

    def complete(requests: list[tuple[str, dict]]) -> list[str]:
        if not opened:
            path = gguf()
            opened.update(template=gguf_chat_template(path),
                          llm=open_gguf(path, n_ctx=n_ctx * batch_size, n_threads=threads, n_seq_max=batch_size))
        replies = []
        for start in range(0, len(requests), batch_size):
            part = requests[start:start + batch_size]
            replies += json_completions(opened["llm"], [render_request(opened["template"], r) for r, _ in part],
                                        [schema for _, schema in part], max_tokens)
        return replies

    return complete


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
    elif cfg.generator == "local":
        if cfg.qac:
            raise RaftuneError(f"data.generator=local writes its questions from the corpus, data.qac={cfg.qac} would "
                               f"replace them: set data.qac: null")
        if not cfg.question_styles:
            raise RaftuneError(f"data.question_styles is empty: expected one or more of {', '.join(STYLES)}")
        model, gguf = local_gguf(cfg.generator_model)
        complete = llama_complete(gguf, cfg.generator_max_tokens, cfg.generator_threads, cfg.generator_batch_size)
        return LocalGenerator(model, complete, ResponseCache(cache_path), cfg.question_styles, cfg.generator_batch_size)
    else:
        raise RaftuneError(f"data.generator must be extractive, openai, transformers or local, got '{cfg.generator}'")
    return ChatGenerator(cfg.generator, model, complete, ResponseCache(cache_path))
