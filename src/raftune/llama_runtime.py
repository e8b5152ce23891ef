"""Opening a GGUF with llama-cpp-python, the one way raftune does it.

llama.cpp's CPU backend "repacks" weights into extra buffer types (AMX tiles on Intel CPUs that have them). On
the AMX machines raftune is tested on, llama.cpp 0c1e570 (llama-cpp-python 0.3.36) crashes with SIGSEGV in
`ggml_backend_amx_mul_mat` on the first q8_0 matrix product. llama.cpp's `use_extra_bufts=false` model parameter
turns the extra buffers off; llama-cpp-python does not expose it, so we set it on the default parameters it
starts from. The plain CPU kernels compute the same products, only without the repacked layout.

llama-cpp-python generates on half the cores by default (one thread on a 2-core machine); raftune uses them all.
It generates one sequence at a time; `gguf_generate` decodes several together, as transformers' batched generate
does, so each decoding step reads the weights once for all of them.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import os

import numpy as np

from raftune import RaftuneError
from raftune.gguf_file import read_gguf


@contextlib.contextmanager
def _defaults(n_seq_max: int):
    """llama-cpp-python's Llama starts from llama.cpp's default model and context parameters; these are set on them:
    no extra buffers, and room for `n_seq_max` sequences of n_ctx / n_seq_max cells each (`gguf_generate`). Each
    sequence gets its own part of the KV cache: in one shared ("unified") cache every sequence's attention spans
    all the cells, and decoding 27 of Gemma's answers together was no faster than one at a time."""
    import llama_cpp

    model_params, context_params = (llama_cpp.llama_cpp.llama_model_default_params,
                                    llama_cpp.llama_cpp.llama_context_default_params)

    def model():
        value = model_params()
        value.use_extra_bufts = False
        return value

    def context():
        value = context_params()
        value.n_seq_max, value.kv_unified = n_seq_max, False
        return value

    llama_cpp.llama_cpp.llama_model_default_params = model
    llama_cpp.llama_cpp.llama_context_default_params = context
    try:
        yield
    finally:
        llama_cpp.llama_cpp.llama_model_default_params = model_params
        llama_cpp.llama_cpp.llama_context_default_params = context_params


def open_gguf(path, n_ctx: int = 4096, logits_all: bool = False, n_threads: int | None = None, n_seq_max: int = 1):
    from llama_cpp import Llama

    read_gguf(path)  # a clear one-line error for a missing, truncated or foreign file, before llama.cpp aborts
    with _defaults(n_seq_max):
        try:
            return Llama(model_path=str(path), n_ctx=n_ctx, logits_all=logits_all,
                         n_threads=n_threads or len(os.sched_getaffinity(0)), seed=0, verbose=False)
        except ValueError as err:
            raise RaftuneError(f"{path}: llama.cpp could not load it ({err})") from None


def gguf_tokens(llm, prompt: str) -> list[int]:
    """The rendered prompt already holds BOS and the control tokens as text: parse them, add nothing."""
    return llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)


@contextlib.contextmanager
def _fresh_batch(llm, size: int):
    """An empty KV cache and a llama.cpp batch of `size` tokens, freed afterwards."""
    import llama_cpp

    llm.reset()
    llama_cpp.llama_memory_clear(llama_cpp.llama_get_memory(llm.ctx), True)
    batch = llama_cpp.llama_batch_init(size, 0, 1)
    try:
        yield batch
    finally:
        llama_cpp.llama_batch_free(batch)


def _decode(llm, batch, entries, what: str) -> list[tuple[int, np.ndarray]]:
    """llama.cpp decodes `entries` (sequence, position, token, wants logits) as one batch; returns (entry index,
    logits) for those that want them. The logits are llama.cpp's buffer: read them before the next decode."""
    import llama_cpp

    batch.n_tokens = len(entries)
    for i, (seq, pos, token, wanted) in enumerate(entries):
        batch.token[i], batch.pos[i], batch.n_seq_id[i], batch.logits[i] = token, pos, 1, wanted
        batch.seq_id[i][0] = seq
    if llama_cpp.llama_decode(llm.ctx, batch) != 0:
        raise RaftuneError(f"llama.cpp could not evaluate {what}")
    return [(i, np.ctypeslib.as_array(llama_cpp.llama_get_logits_ith(llm.ctx, i), shape=(llm.n_vocab(),)))
            for i, entry in enumerate(entries) if entry[3]]


def gguf_logits(llm, ids: list[int], positions) -> np.ndarray:
    """llama.cpp's logits at `positions` of `ids` (a fresh sequence), as a [len(positions), vocab] float32 array.

    One llama.cpp batch per `n_batch` tokens whose output flags are set at those positions only: llama-cpp-python's
    `logits_all` would have llama.cpp produce, and the wrapper copy, every position's logits (2 x 0.5 GB for a
    500-token prompt with Gemma's 262,144-token vocabulary)."""
    wanted = {int(p): n for n, p in enumerate(positions)}
    out = np.empty((len(wanted), llm.n_vocab()), dtype=np.float32)
    entries = [(0, pos, token, pos in wanted) for pos, token in enumerate(ids)]
    with _fresh_batch(llm, llm.n_batch) as batch:
        for start in range(0, len(entries), llm.n_batch):
            chunk = entries[start:start + llm.n_batch]
            for i, row in _decode(llm, batch, chunk, f"a {len(ids)}-token sequence"):
                out[wanted[chunk[i][1]]] = row
    return out


def gguf_generate(llm, prompts: list[list[int]], max_new_tokens: int, grammars: list[str] | None = None) -> list[list[int]]:
    """Greedy continuations of `prompts` (token ids), decoded together as llama.cpp sequences 0..n-1 of `llm`, which
    was opened with n_seq_max >= n and n_ctx / n_seq_max >= the longest prompt and its new tokens. A sequence ends
    at an end-of-generation token (EOS, <end_of_turn>, ...), which is left out, or after `max_new_tokens`.

    `grammars` (GBNF, one per prompt) hold each sequence to its grammar, as llama.cpp's own samplers do: the greedy
    token is checked first, and only when the grammar rejects it are all the vocabulary's tokens masked (a mask is a
    pass of the grammar over Qwen's 151,936 tokens: masking on every step, as llama-cpp-python does, took the 1.5B
    1.21x as long a chunk on 2 cores, bench/local_generator_speed.py). Greedy either way: on the same logits, the
    tokens masking every step would give. A batch's logits are rounded differently from one sequence's by llama.cpp's
    matrix products, so a near-tie can go the other way (bench/local_generator_speed.py counts the replies that differ)."""
    import llama_cpp

    vocab = llama_cpp.llama_model_get_vocab(llm.model)
    what = f"{len(prompts)} sequences"
    out = [[] for _ in prompts]
    following = {}  # sequence -> its greedy next token
    held = [_Grammar(vocab, llm.n_vocab(), g) for g in grammars] if grammars else []

    def decode(batch, entries):
        for i, row in _decode(llm, batch, entries, what):
            s = entries[i][0]
            following[s] = held[s].greedy(row) if held else int(row.argmax())

    try:
        with _fresh_batch(llm, max(llm.n_batch, len(prompts))) as batch:
            prefill = [(s, p, t, p == len(ids) - 1) for s, ids in enumerate(prompts) for p, t in enumerate(ids)]
            for start in range(0, len(prefill), llm.n_batch):
                decode(batch, prefill[start:start + llm.n_batch])
            active = list(range(len(prompts)))
            while active:
                going = []
                for s in active:
                    if not llama_cpp.llama_vocab_is_eog(vocab, following[s]):
                        out[s].append(following[s])
                        if held:
                            held[s].accept(following[s])
                        if len(out[s]) < max_new_tokens:
                            going.append(s)
                active = going
                if active:
                    decode(batch, [(s, len(prompts[s]) + len(out[s]) - 1, out[s][-1], True) for s in active])
    finally:
        for grammar in held:
            grammar.free()
    return out


class _Grammar:
    """One sequence's llama.cpp grammar sampler: the greedy token it allows, and the tokens it has accepted."""

    def __init__(self, vocab, n_vocab: int, gbnf: str):
        import llama_cpp
        from llama_cpp._internals import LlamaTokenDataArray

        self.sampler = llama_cpp.llama_sampler_init_grammar(vocab, gbnf.encode("utf-8"), b"root")
        if not self.sampler:
            raise RaftuneError(f"llama.cpp could not parse the grammar: {gbnf[:200]}")
        self.one = (llama_cpp.llama_token_data * 1)()
        self.single = llama_cpp.llama_token_data_array(data=self.one, size=1, selected=-1, sorted=False)
        self.every = LlamaTokenDataArray(n_vocab=n_vocab)

    def allows(self, token: int) -> bool:
        import llama_cpp

        self.one[0].id, self.one[0].logit, self.one[0].p = token, 0.0, 0.0
        self.single.size = 1
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(self.single))
        return np.isfinite(self.one[0].logit)

    def greedy(self, logits: np.ndarray) -> int:
        import llama_cpp

        token = int(logits.argmax())
        if self.allows(token):
            return token
        self.every.copy_logits(logits)
        llama_cpp.llama_sampler_apply(self.sampler, ctypes.byref(self.every.candidates))
        return int(self.every.candidates_data.id[self.every.candidates_data.logit.argmax()])

    def accept(self, token: int) -> None:
        import llama_cpp

        llama_cpp.llama_sampler_accept(self.sampler, token)

    def free(self) -> None:
        import llama_cpp

        llama_cpp.llama_sampler_free(self.sampler)


def json_completions(llm, prompts: list[str], schemas: list[dict], max_tokens: int) -> list[str]:
    """The greedy continuations of rendered prompts, decoded together (`gguf_generate`), each held by llama.cpp's
    grammar to JSON that its schema describes (cut off, it is no JSON at all). No repetition penalty: an answer's
    quotes repeat the prompt's words."""
    from llama_cpp.llama_grammar import json_schema_to_gbnf

    grammars = [json_schema_to_gbnf(json.dumps(schema)) for schema in schemas]
    replies = gguf_generate(llm, [gguf_tokens(llm, p) for p in prompts], max_tokens, grammars)
    return [llm.detokenize(tokens).decode("utf-8", errors="replace") for tokens in replies]
