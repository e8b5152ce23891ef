"""Read a GGUF back with the `gguf` reader and check it against the HF model folder it was made from."""

from __future__ import annotations

import functools
import json
from pathlib import Path

import numpy as np

from raftune import RaftuneError

CONTROL = 3  # gguf.TokenType.CONTROL


def _field(reader, key):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def read_gguf(path: str | Path):
    """gguf's reader, once per file version in a process (export checks, fidelity and evaluation all read it)."""
    path = Path(path)
    if not path.is_file():
        raise RaftuneError(f"GGUF file not found: {path}")
    stat = path.stat()
    return _read(str(path.resolve()), stat.st_size, stat.st_mtime_ns, stat.st_ino)


@functools.lru_cache(maxsize=8)
def _read(path: str, size: int, mtime_ns: int, inode: int):
    from gguf import GGUFReader

    class Reader(GGUFReader):
        # The reader slices its file once per element of every array field, and on numpy's memmap subclass each
        # slice pays memmap's __getitem__ and __array_finalize__: with Gemma 3's 262,144-token vocabulary a read
        # took 54 s, 11 s over a plain ndarray of the same map (the same bytes).
        @property
        def data(self):
            return self._data

        @data.setter
        def data(self, value):
            self._data = np.asarray(value)

    try:
        return Reader(path)
    except Exception as err:  # the reader raises ValueError/struct errors on truncated or foreign files
        raise RaftuneError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from None


def check_gguf(path: str | Path, model_dir: str | Path) -> dict:
    """Architecture, tensor count, special token ids, control tokens and chat template must match the HF folder."""
    from transformers import AutoTokenizer

    reader = read_gguf(path)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    tokens = _field(reader, "tokenizer.ggml.tokens")
    types = _field(reader, "tokenizer.ggml.token_type")
    facts = {
        "architecture": _field(reader, "general.architecture"),
        "tensors": len(reader.tensors),
        "block_count": _field(reader, f"{_field(reader, 'general.architecture')}.block_count"),
        "vocab_size": len(tokens),
        "bos_token_id": _field(reader, "tokenizer.ggml.bos_token_id"),
        "eos_token_id": _field(reader, "tokenizer.ggml.eos_token_id"),
        "add_bos_token": _field(reader, "tokenizer.ggml.add_bos_token"),
        "chat_template_equal": _field(reader, "tokenizer.chat_template") == tokenizer.chat_template,
        "control_tokens": [t for t, kind in zip(tokens, types) if kind == CONTROL],
    }
    problems = []
    if facts["block_count"] != config["num_hidden_layers"]:
        problems.append(f"block_count {facts['block_count']} != num_hidden_layers {config['num_hidden_layers']}")
    if facts["vocab_size"] != config["vocab_size"]:
        problems.append(f"vocabulary {facts['vocab_size']} != {config['vocab_size']}")
    for name in ("bos_token_id", "eos_token_id"):
        if facts[name] != getattr(tokenizer, name):
            problems.append(f"{name} {facts[name]} != tokenizer's {getattr(tokenizer, name)}")
    if not facts["chat_template_equal"]:
        problems.append("chat template differs from the training tokenizer's")
    for special in ("[INST]", "[/INST]"):
        if special in tokenizer.get_vocab() and special not in facts["control_tokens"]:
            problems.append(f"{special} is not typed as a control token")
    if problems:
        raise RaftuneError(f"{path}: GGUF check failed: {'; '.join(problems)}")
    return facts
