"""raftune: RAFT-style data, QLoRA finetuning, merge, GGUF export and evaluation, from a folder of documents."""

import logging

__version__ = "0.1.0"

# bitsandbytes 0.50, imported by peft and transformers in every stage, tries on CPUs with AVX512-BF16 to fetch a 4-bit
# kernel from the Hugging Face hub through the `kernels` package, and without that package logs "Failed to load CPU
# gemm_4bit_forward from kernels-community" in every process. Installing `kernels` would only make it try the hub
# (which raftune never needs; offline it fails the same way); its built-in CPU kernel is used either way. That one
# message is dropped here, before any module can import bitsandbytes; the logger's other messages still show.
logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
    lambda record: not record.getMessage().startswith("Failed to load CPU gemm_4bit_forward from kernels-community"))

# The layers, lowest first. A module imports only from its own layer or lower ones (tests/test_layers.py), so any
# stage can be read, tested and rerun without the ones after it. Heavy third-party libraries are imported inside
# functions; raftune's own modules at the top, unless a module must stay importable without a heavy dependency.
#   data sits below models: the tiny test model is built from the corpus, and no data step needs a model.
LAYERS = [
    # packaged: the cache, GGUFs assembled from part packages; gguf_file, llama_runtime: GGUFs read and run by
    # llama.cpp, for the local data generator, export, evaluation and the assistant
    ("core", ["raftune", "raftune.config", "raftune.chat", "raftune.answer", "raftune.manifest", "raftune.figures",
              "raftune.packaged", "raftune.gguf_file", "raftune.llama_runtime"]),
    ("data", ["raftune.data"]),  # documents, chunks, RAFT rows, test sets, retrieval
    ("models", ["raftune.models", "raftune.tiny"]),
    ("train", ["raftune.train", "raftune.sft_data", "raftune.fast", "raftune.memory_budget"]),
    ("merge", ["raftune.merge"]),
    ("export", ["raftune.export"]),  # GGUF files, the fidelity report
    ("evaluate", ["raftune.evaluate"]),
    ("serve", ["raftune.serve", "raftune.plots"]),
    ("cli", ["raftune.cli", "raftune.pipeline", "raftune.__main__"]),
]


class RaftuneError(Exception):
    """An error the user can fix (bad config, missing file, malformed row). The CLI prints it as one line."""
