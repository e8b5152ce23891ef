"""Resolving the `base` of a config: "tiny" (built offline from the corpus), a local folder, or a hub id."""

from __future__ import annotations

import json
from pathlib import Path

import torch

from raftune import RaftuneError
from raftune.config import RunConfig


def resolve_base(config: RunConfig) -> str:
    """A path or hub id that `from_pretrained` accepts."""
    if config.base == "tiny":
        from raftune.data.corpus import corpus_chunks, load_qac
        from raftune.tiny import TinySpec, tiny_model

        documents = [chunk.text for chunk in corpus_chunks(config.data)]
        # Questions and answers of the training triplets join the tokenizer's training text (not the model's
        # pre-training), so prompts tokenise compactly; the test set is never seen.
        extra = [f"{row['question']} {row['answer']}" for row in load_qac(config.data.qac)] if config.data.qac else []
        return str(tiny_model(documents, extra, TinySpec(**config.tiny)))
    path = Path(config.base)
    if path.exists():
        if not (path / "config.json").is_file():
            raise RaftuneError(f"base model folder {path} has no config.json")
        return str(path)
    if config.base.count("/") == 1 and not config.base.startswith((".", "/")):
        return config.base  # a hub id; only then may transformers reach the hub
    raise RaftuneError(f"base model not found: '{config.base}' (expected 'tiny', a model folder or a hub id)")


def load_tokenizer(name: str):
    from transformers import AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError) as err:
        raise RaftuneError(f"{name}: no loadable tokenizer ({str(err).splitlines()[0]})") from None
    if not tokenizer.chat_template:
        raise RaftuneError(f"{name}: the tokenizer has no chat template; raftune renders every prompt with it")
    return tokenizer


def save_tokenizer(tokenizer, source: str, out_dir) -> None:
    """Save the tokenizer (chat template included) and copy the SentencePiece `tokenizer.model` beside it.

    transformers 5 saves only tokenizer.json. Without tokenizer.model, llama.cpp's converter falls back from its
    SentencePiece path to reading tokenizer.json, and its merges then differ from the HF tokenizer's (seen here:
    "Prüfung" -> P|rüfung in HF, Prü|fung in llama.cpp). With the file, both tokenise identically."""
    import shutil

    from transformers.utils import cached_file

    tokenizer.save_pretrained(str(out_dir))
    spm_file = cached_file(source, "tokenizer.model", _raise_exceptions_for_missing_entries=False)
    if spm_file:
        shutil.copyfile(spm_file, Path(out_dir) / "tokenizer.model")


def load_model(name: str, quantization: dict | None = None, dtype: torch.dtype = torch.float32):
    """Full-precision model, or 4-bit (bitsandbytes) when `quantization` holds BitsAndBytesConfig kwargs."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": dtype}
    if quantization:
        kwargs["quantization_config"] = BitsAndBytesConfig(**quantization)
    return AutoModelForCausalLM.from_pretrained(name, **kwargs)


def base_provenance(name: str) -> dict:
    path = Path(name)
    info = {"base": name}
    if (path / "raftune_tiny.json").is_file():
        info["tiny"] = json.loads((path / "raftune_tiny.json").read_text())
    return info
