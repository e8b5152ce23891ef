"""Opening a GGUF with llama-cpp-python, the one way raftune does it.

llama.cpp's CPU backend "repacks" weights into extra buffer types (AMX tiles on Intel CPUs that have them). On
the AMX machines raftune is tested on, llama.cpp 0c1e570 (llama-cpp-python 0.3.36) crashes with SIGSEGV in
`ggml_backend_amx_mul_mat` on the first q8_0 matrix product. llama.cpp's `use_extra_bufts=false` model parameter
turns the extra buffers off; llama-cpp-python does not expose it, so we set it on the default parameters it
starts from. The plain CPU kernels compute the same products, only without the repacked layout.

llama-cpp-python generates on half the cores by default (one thread on a 2-core machine); raftune uses them all.
"""

from __future__ import annotations

import contextlib
import os

import numpy as np

from raftune import RaftuneError
from raftune.export.gguf_check import read_gguf


@contextlib.contextmanager
def _without_extra_buffers():
    import llama_cpp

    original = llama_cpp.llama_cpp.llama_model_default_params

    def params():
        value = original()
        value.use_extra_bufts = False
        return value

    llama_cpp.llama_cpp.llama_model_default_params = params
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = original


def open_gguf(path, n_ctx: int = 4096, logits_all: bool = False, n_threads: int | None = None):
    from llama_cpp import Llama

    read_gguf(path)  # a clear one-line error for a missing, truncated or foreign file, before llama.cpp aborts
    with _without_extra_buffers():
        try:
            return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all,
                         n_threads=n_threads or len(os.sched_getaffinity(0)), seed=0, verbose=False)
        except ValueError as err:
            raise RaftuneError(f"{path}: llama.cpp could not load it ({err})") from None


def gguf_logits(llm, ids: list[int], positions) -> np.ndarray:
    """llama.cpp's logits at `positions` of `ids` (a fresh sequence), as a [len(positions), vocab] float32 array.

    One llama.cpp batch per `n_batch` tokens whose output flags are set at those positions only: llama-cpp-python's
    `logits_all` would have llama.cpp produce, and the wrapper copy, every position's logits (2 x 0.5 GB for a
    500-token prompt with Gemma's 262,144-token vocabulary)."""
    import llama_cpp

    wanted = {int(p): n for n, p in enumerate(positions)}
    out = np.empty((len(wanted), llm.n_vocab()), dtype=np.float32)
    llm.reset()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
    for start in range(0, len(ids), llm.n_batch):
        chunk = ids[start:start + llm.n_batch]
        batch = llama_cpp.llama_batch_init(len(chunk), 0, 1)
        try:
            batch.n_tokens = len(chunk)
            for i, token in enumerate(chunk):
                batch.token[i], batch.pos[i], batch.n_seq_id[i] = token, start + i, 1
                batch.seq_id[i][0] = 0
                batch.logits[i] = (start + i) in wanted
            if llama_cpp.llama_decode(llm.ctx, batch) != 0:
                raise RaftuneError(f"llama.cpp could not evaluate a {len(ids)}-token sequence")
            for i in range(len(chunk)):
                if (start + i) in wanted:
                    row = llama_cpp.llama_get_logits_ith(llm.ctx, i)
                    out[wanted[start + i]] = np.ctypeslib.as_array(row, shape=(out.shape[1],))
        finally:
            llama_cpp.llama_batch_free(batch)
    return out
