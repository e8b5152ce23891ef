"""Model providers behind one interface: `generate(prompt) -> Answer`, where `prompt` is `chat.render_prompt`'s text.

Both decode greedily with no repetition penalty, so an HF model and its GGUF can be compared token for token.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from raftune.chat import encode


@dataclass
class Answer:
    text: str
    new_tokens: int
    seconds: float


class HFProvider:
    def __init__(self, name: str, model_dir: str, max_new_tokens: int):
        from raftune.models import load_model, load_tokenizer

        self.name, self.max_new_tokens = name, max_new_tokens
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_model(model_dir).eval()

    @torch.no_grad()
    def generate(self, prompt: str) -> Answer:
        started = time.time()
        ids = torch.tensor([encode(self.tokenizer, prompt)])
        out = self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=self.max_new_tokens,
                                  do_sample=False, eos_token_id=self.tokenizer.eos_token_id,
                                  pad_token_id=self.tokenizer.eos_token_id)[0, ids.shape[1]:]
        text = self.tokenizer.decode(out, skip_special_tokens=True)
        return Answer(text.strip(), len(out), time.time() - started)

    def close(self):
        del self.model


class GGUFProvider:
    def __init__(self, name: str, path: str, max_new_tokens: int, n_ctx: int = 4096):
        from raftune.llama_runtime import open_gguf

        self.name, self.max_new_tokens = name, max_new_tokens
        self.llm = open_gguf(path, n_ctx=n_ctx)

    def generate(self, prompt: str) -> Answer:
        started = time.time()
        # The rendered prompt already holds BOS and the control tokens as text: parse them, add nothing.
        tokens = self.llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
        out = self.llm.create_completion(tokens, max_tokens=self.max_new_tokens, temperature=0.0, top_k=1,
                                         repeat_penalty=1.0)
        return Answer(out["choices"][0]["text"].strip(), out["usage"]["completion_tokens"], time.time() - started)

    def close(self):
        self.llm.close()
