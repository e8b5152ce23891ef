"""Model providers behind one interface.

    provider.render(question, documents) -> str      the exact prompt (raftune.chat renders it for every backend)
    provider.generate(prompts) -> iterator of (index, Answer), as answers arrive, batched where the backend allows
    provider.identity -> dict                       what the answer cache keys on, with the prompt and parameters

Kinds (an `evaluate.models` entry names one; `models_of_run` builds the run's own):
  hf      a transformers model folder or hub id; optional `adapter` (a LoRA folder), `load_in_4bit`, `dtype`
  gguf    a GGUF file through llama-cpp-python; `tokenizer` names the HF folder whose chat template renders prompts
  openai  any OpenAI-compatible endpoint (llama.cpp server, vLLM, OpenAI); `api: completions` sends the rendered
          prompt (the served model's template, applied by raftune), `api: chat` sends the user message; the key is
          read from the environment variable `api_key_env` names and is never stored
  recorded  a JSONL of answers made elsewhere (see raftune.evaluate.recorded)
  extractive  no model: the best-matching sentence of the top passage (`extractive_baseline`); with
          `evaluate.extractive_baseline` (the default) every evaluation has this row, `extractive-baseline`

All decode greedily with no repetition penalty, so an HF model and its GGUF can be compared token for token.
"""

from __future__ import annotations

import math
import os
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path

from raftune import RaftuneError
from raftune.answer import format_answer
from raftune.chat import encode, render_prompt, user_message
from raftune.data.generators import api_error
from raftune.data.raft import best_sentence
from raftune.llama_runtime import gguf_generate, gguf_tokens, open_gguf
from raftune.manifest import strip_credentials
from raftune.models import load_tokenizer


@dataclass
class Answer:
    text: str
    new_tokens: int
    seconds: float  # wall time of the call that produced it (a whole batch for batched backends)
    batch_size: int = 1

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens per second of the call; in a batch, this answer's share of the batch's time."""
        return self.new_tokens * self.batch_size / max(self.seconds, 1e-9)


def fingerprint(path: str) -> list:
    """Size and modification time of the weight files: a retrained or re-exported model gets new cache keys,
    without hashing gigabytes. A hub id is its own fingerprint."""
    p = Path(path)
    if p.is_file():
        return [p.name, p.stat().st_size, p.stat().st_mtime_ns]
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix in {".safetensors", ".bin", ".gguf", ".json", ".model"})
        return [[f.name, f.stat().st_size, f.stat().st_mtime_ns] for f in files]
    return [path]


class HFProvider:
    """transformers generate() on batches of left-padded prompts. The weights load on the first generate(), so a
    rerun whose answers are all cached never loads the model."""

    def __init__(self, spec: dict, max_new_tokens: int, batch_size: int, quantization: dict | None = None):
        import torch

        self.spec, self.name, self.max_new_tokens = spec, spec["name"], max_new_tokens
        self.batch_size = int(spec.get("batch_size", batch_size))
        self.quantization = quantization
        # an adapter folder carries the training tokenizer and chat template
        self.tokenizer = load_tokenizer(spec.get("tokenizer") or spec.get("adapter") or spec["path"])
        self.dtype = getattr(torch, spec.get("dtype", "float32"))
        self.model = None
        self.eos = self.tokenizer.eos_token_id
        self.pad = next(i for i in (self.tokenizer.pad_token_id, self.tokenizer.unk_token_id, self.eos) if i is not None)
        self.identity = {"kind": "hf", "path": spec["path"], "weights": fingerprint(spec["path"]),
                         "adapter": fingerprint(spec["adapter"]) if spec.get("adapter") else None,
                         "load_in_4bit": bool(spec.get("load_in_4bit")), "dtype": str(self.dtype)}

    def _load(self):
        import torch
        from transformers import AutoModelForCausalLM, BitsAndBytesConfig

        kwargs = {"dtype": self.dtype}
        if self.spec.get("load_in_4bit"):
            # the run's own BitsAndBytesConfig (what training saw), else NF4 with double quantisation
            bnb = dict(self.quantization or {"load_in_4bit": True, "bnb_4bit_quant_type": "nf4",
                                             "bnb_4bit_use_double_quant": True, "bnb_4bit_compute_dtype": "float32"})
            kwargs["quantization_config"] = BitsAndBytesConfig(**bnb)
        if torch.cuda.is_available():
            kwargs["device_map"] = {"": 0}
        model = AutoModelForCausalLM.from_pretrained(self.spec["path"], **kwargs)
        if self.spec.get("adapter"):
            from peft import PeftModel

            model = PeftModel.from_pretrained(model, self.spec["adapter"])
        self.model = model.eval()

    def render(self, question: str, documents: list[str]) -> str:
        return render_prompt(self.tokenizer, question, documents)

    def generate(self, prompts: list[str]):
        import torch

        if self.model is None:
            self._load()
        device = self.model.device
        encoded = [encode(self.tokenizer, p) for p in prompts]
        order = sorted(range(len(prompts)), key=lambda n: len(encoded[n]))  # batches of similar length pad less
        for start in range(0, len(prompts), self.batch_size):
            rows = order[start:start + self.batch_size]
            batch = [encoded[n] for n in rows]
            width = max(map(len, batch))
            # left padding: every row's answer then starts at column `width`
            ids = torch.tensor([[self.pad] * (width - len(x)) + x for x in batch], device=device)
            mask = torch.tensor([[0] * (width - len(x)) + [1] * len(x) for x in batch], device=device)
            started = time.time()
            with torch.no_grad():
                out = self.model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=self.max_new_tokens,
                                          do_sample=False, eos_token_id=self.eos, pad_token_id=self.pad)
            seconds = time.time() - started
            for index, row in zip(rows, out[:, width:].tolist()):
                n = row.index(self.eos) + 1 if self.eos in row else len(row)
                text = self.tokenizer.decode(row[:n], skip_special_tokens=True).strip()
                yield index, Answer(text, n, seconds, len(batch))

    def close(self):
        self.model = None


def extractive_baseline(question: str, documents: list[str]) -> Answer:
    """Kind `extractive`, a floor for every model reading the same context: the sentence of the first (top-ranked)
    passage that best matches the question, quoted and repeated as the final answer. No model, so no tokens/s."""
    quote = best_sentence(question, documents[0] if documents else "")
    return Answer(format_answer(quote, quote), 0, math.nan)


# Greedy, no repetition penalty: the GGUF's answers in evaluate, `raftune serve` and `raftune chat`.
GGUF_SAMPLING = {"temperature": 0.0, "top_k": 1, "repeat_penalty": 1.0}


class GGUFProvider:
    """llama.cpp decoding batches of prompts together (`gguf_generate`), sorted by length as HFProvider's are."""

    def __init__(self, spec: dict, max_new_tokens: int, batch_size: int):
        self.spec, self.name, self.max_new_tokens = spec, spec["name"], max_new_tokens
        self.batch_size = int(spec.get("batch_size", batch_size))
        self.tokenizer = load_tokenizer(spec["tokenizer"])
        self.llm, self.n_ctx = None, 0  # opened on the first generate(), like HFProvider's weights
        self.identity = {"kind": "gguf", "path": spec["path"], "weights": fingerprint(spec["path"])}

    def render(self, question: str, documents: list[str]) -> str:
        return render_prompt(self.tokenizer, question, documents)

    def _resize(self, longest: int):
        """A context with room for a batch of the longest prompt and its new tokens. llama.cpp gives each sequence
        a multiple of 256 positions; asking for exactly that keeps it from rounding (and warning)."""
        n_ctx = self.batch_size * -(-(longest + self.max_new_tokens) // 256) * 256
        if n_ctx > self.n_ctx:
            self.close()
            self.llm = open_gguf(self.spec["path"], n_ctx=n_ctx, n_seq_max=self.batch_size)
            self.n_ctx = n_ctx

    def generate(self, prompts: list[str]):
        # the HF tokenizer, which the export's fidelity gate holds to the GGUF's, sizes the context, so the GGUF
        # opens once; its own tokenizer encodes, and an encoding longer than the HF one reopens it larger
        self._resize(max(len(encode(self.tokenizer, p)) for p in prompts))
        encoded = [gguf_tokens(self.llm, p) for p in prompts]
        self._resize(max(map(len, encoded)))
        order = sorted(range(len(prompts)), key=lambda n: len(encoded[n]))
        for start in range(0, len(prompts), self.batch_size):
            rows = order[start:start + self.batch_size]
            started = time.time()
            answers = gguf_generate(self.llm, [encoded[n] for n in rows], self.max_new_tokens)
            seconds = time.time() - started
            for index, tokens in zip(rows, answers):
                text = self.llm.detokenize(tokens).decode("utf-8", errors="replace").strip()
                yield index, Answer(text, len(tokens), seconds, len(rows))

    def close(self):
        if self.llm is not None:
            self.llm.close()
            self.llm, self.n_ctx = None, 0


class OpenAIProvider:
    def __init__(self, spec: dict, max_new_tokens: int):
        from openai import OpenAI

        self.name, self.max_new_tokens = spec["name"], max_new_tokens
        self.base_url, self.model = spec["base_url"], spec["model"]
        self.api = spec.get("api", "chat")
        if self.api not in {"chat", "completions"}:
            raise RaftuneError(f"model '{self.name}': api must be chat or completions, got '{self.api}'")
        self.tokenizer = None
        if self.api == "completions":
            if not spec.get("tokenizer"):
                raise RaftuneError(f"model '{self.name}': api completions needs 'tokenizer' (the served model's "
                                   f"HF folder), whose chat template renders the prompt")

            self.tokenizer = load_tokenizer(spec["tokenizer"])
        key_env = spec.get("api_key_env", "OPENAI_API_KEY")
        key = os.environ.get(key_env)
        if key is None and "api.openai.com" in self.base_url:
            raise RaftuneError(f"model '{self.name}': {strip_credentials(self.base_url)} needs an API key in the "
                               f"environment variable {key_env}")
        self.max_retries = int(spec.get("max_retries", 3))
        # the client retries connection errors, timeouts, 429 and 5xx with exponential backoff
        self.client = OpenAI(base_url=self.base_url, api_key=key or "not-needed", max_retries=self.max_retries,
                             timeout=float(spec.get("timeout", 120)))
        self.concurrency = int(spec.get("concurrency", 4))
        # server-specific sampling fields, e.g. {repeat_penalty: 1.0} for llama-cpp-python's server, whose default
        # 1.1 would otherwise make its greedy answers differ from the same GGUF run in-process
        self.extra_body = dict(spec.get("extra_body") or {})
        self.identity = {"kind": "openai", "base_url": strip_credentials(self.base_url), "model": self.model,
                         "api": self.api, "extra_body": self.extra_body}

    def render(self, question: str, documents: list[str]) -> str:
        if self.api == "completions":
            return render_prompt(self.tokenizer, question, documents)
        return user_message(question, documents)  # the server applies the model's own template

    def _one(self, prompt: str) -> Answer:
        started = time.time()
        if self.api == "chat":
            reply = self.client.chat.completions.create(model=self.model, messages=[{"role": "user", "content": prompt}],
                                                        temperature=0.0, max_tokens=self.max_new_tokens,
                                                        extra_body=self.extra_body or None)
            text = reply.choices[0].message.content or ""
        else:
            reply = self.client.completions.create(model=self.model, prompt=prompt, temperature=0.0,
                                                   max_tokens=self.max_new_tokens, extra_body=self.extra_body or None)
            text = reply.choices[0].text
        tokens = reply.usage.completion_tokens if reply.usage else 0
        return Answer(text.strip(), tokens, time.time() - started)

    def generate(self, prompts: list[str]):
        """Requests in parallel; on a failure the requests not yet started are cancelled, the answers that still
        arrive are yielded (and so cached), then the error is raised."""
        error = None
        with ThreadPoolExecutor(self.concurrency) as pool:
            futures = {pool.submit(self._one, p): i for i, p in enumerate(prompts)}
            for future in as_completed(futures):
                try:
                    answer = future.result()
                except Exception as err:  # noqa: BLE001 - every openai error becomes one clear line below
                    if error is None:
                        error = err
                        for other in futures:
                            other.cancel()
                    continue
                if not future.cancelled():
                    yield futures[future], answer
        if error is not None:
            raise api_error(error, f"model '{self.name}'", self.base_url, self.max_retries)

    def close(self):
        self.client.close()


def make_provider(spec: dict, cfg, quantization: dict | None = None):
    if spec["kind"] == "hf":
        return HFProvider(spec, cfg.max_new_tokens, cfg.batch_size, quantization)
    if spec["kind"] == "gguf":
        return GGUFProvider(spec, cfg.max_new_tokens, cfg.batch_size)
    if spec["kind"] == "openai":
        return OpenAIProvider(spec, cfg.max_new_tokens)
    raise RaftuneError(f"no generating provider for kind {spec['kind']}")
