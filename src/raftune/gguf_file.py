"""Reading a GGUF's metadata with the `gguf` library: the export checks, the fidelity report, evaluation and the local
data generator all read it here, before llama.cpp is given the file."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
from gguf import GGUFReader

from raftune import RaftuneError
from raftune.chat import GGUFChatTemplate


class ArrayGGUFReader(GGUFReader):
    """gguf's reader over a plain ndarray of the file's map (the same bytes). The reader slices its file once per
    element of every array field, and on numpy's memmap subclass each slice pays memmap's __getitem__ and
    __array_finalize__: with Gemma 3's 262,144-token vocabulary a read took 54 s, 11 s over a plain ndarray."""

    @property
    def data(self):
        return self._data

    @data.setter
    def data(self, value):
        self._data = np.asarray(value)


def _field(reader, key):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


_METADATA: dict[tuple, dict] = {}
QK_TENSOR = re.compile(r"blk\.(\d+)\.attn_([qk])\.weight")  # the attention projections whose row order rope fixes


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


def gguf_chat_template(path: str | Path) -> GGUFChatTemplate:
    """The GGUF's own chat template with its BOS and EOS texts; one line naming the file when it has none."""
    meta = read_gguf(path)
    if not meta["chat_template"]:
        raise RaftuneError(f"{path}: the GGUF has no chat template (tokenizer.chat_template); an instruct model's has one")
    token = lambda key: meta["tokens"][meta[key]] if meta[key] is not None else ""
    return GGUFChatTemplate(meta["chat_template"], token("bos_token_id"), token("eos_token_id"))
