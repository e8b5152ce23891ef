"""Read a GGUF back with the `gguf` reader and check it against the HF model folder it was made from."""

from __future__ import annotations

import json
from pathlib import Path

from raftune import RaftuneError
from raftune.gguf_file import read_gguf

CONTROL = 3  # gguf.TokenType.CONTROL


def check_gguf(path: str | Path, model_dir: str | Path) -> dict:
    """Architecture, tensor count, special token ids, control tokens and chat template must match the HF folder."""
    from transformers import AutoTokenizer

    meta = read_gguf(path)
    config = json.loads((Path(model_dir) / "config.json").read_text())
    tokenizer = AutoTokenizer.from_pretrained(str(model_dir))
    facts = {
        **{name: meta[name] for name in ("architecture", "tensors", "block_count", "bos_token_id", "eos_token_id",
                                         "add_bos_token")},
        "vocab_size": len(meta["tokens"]),
        "chat_template_equal": meta["chat_template"] == tokenizer.chat_template,
        "control_tokens": [t for t, kind in zip(meta["tokens"], meta["token_type"]) if kind == CONTROL],
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
