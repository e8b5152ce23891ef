"""Read a GGUF back with the `gguf` reader and check it against the HF model folder it was made from."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np

from raftune import RaftuneError
from raftune.models import ArrayGGUFReader

CONTROL = 3  # gguf.TokenType.CONTROL
QK_TENSOR = re.compile(r"blk\.(\d+)\.attn_([qk])\.weight")  # the attention projections whose row order rope fixes


def _field(reader, key):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


_METADATA: dict[tuple, dict] = {}


def read_gguf(path: str | Path) -> dict:
    """The metadata raftune checks, read by gguf's reader once per file version in a process (export checks,
    fidelity and evaluation all need it). A file is known by its inode, size and modification time, so the export's
    rename of a checked file keeps it. Only these fields are kept: the reader's parsed form of a 262,144-token
    vocabulary holds 0.4 GB. Of the tensors, only where attn_q/attn_k lie in the file (`qk_tensor` reads them)."""
    path = Path(path)
    if not path.is_file():
        raise RaftuneError(f"GGUF file not found: {path}")
    stat = path.stat()
    key = (stat.st_dev, stat.st_ino, stat.st_size, stat.st_mtime_ns)
    if key not in _METADATA:
        try:
            reader = ArrayGGUFReader(path)
        except Exception as err:  # the reader raises ValueError/struct errors on truncated or foreign files
            raise RaftuneError(f"{path}: not a readable GGUF file ({type(err).__name__}: {err})") from None
        architecture = _field(reader, "general.architecture")
        _METADATA[key] = {
            "architecture": architecture, "tensors": len(reader.tensors),
            "block_count": _field(reader, f"{architecture}.block_count"),
            "file_type": _field(reader, "general.file_type"),
            "tokens": _field(reader, "tokenizer.ggml.tokens"), "token_type": _field(reader, "tokenizer.ggml.token_type"),
            **{name: _field(reader, f"tokenizer.ggml.{name}") for name in ("bos_token_id", "eos_token_id",
                                                                          "add_bos_token")},
            "chat_template": _field(reader, "tokenizer.chat_template"),
            "qk_tensors": {t.name: (int(t.data_offset), int(t.tensor_type), t.data.shape, t.data.dtype.str)
                           for t in reader.tensors if QK_TENSOR.fullmatch(t.name)}}
    return _METADATA[key]


def qk_tensor(path: str | Path, name: str) -> np.ndarray:
    """One attn_q/attn_k tensor of the file, [rows, columns] as float32, dequantised by gguf's own quants."""
    from gguf import GGMLQuantizationType
    from gguf.quants import dequantize

    offset, kind, shape, dtype = read_gguf(path)["qk_tensors"][name]
    data = np.memmap(path, dtype=np.dtype(dtype), mode="r", offset=offset, shape=shape)
    return dequantize(np.asarray(data), GGMLQuantizationType(kind))


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
