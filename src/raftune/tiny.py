"""The tiny Mistral-shaped base model of the demo and the tests, built offline and deterministically.

- Tokenizer: a SentencePiece BPE model trained on the corpus with byte fallback and Mistral's layout
  (<unk>=0, <s>=1, </s>=2, then [INST]/[/INST] as control tokens, which text can never produce), so it reaches
  llama.cpp through the same converter path as Mistral-7B-v0.3's tokenizer.model. It adds no implicit leading
  space ("dummy prefix"): llama.cpp adds that space after *every* special token, Hugging Face only at the start of
  the text, so `<s>[INST] ...` would tokenise differently in the two. Without it, the chat template's own spaces
  are the only ones, and both tokenise every prompt identically (tests/test_export.py checks this).
- Model: `MistralForCausalLM` with a few layers, briefly pre-trained on the documents so that what it writes is
  German words rather than noise.
- Cached under ~/.cache/raftune (or $RAFTUNE_CACHE) by a hash of its inputs; built into a temporary folder and
  renamed, so an interrupted build is never mistaken for a finished one.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from raftune.chat import INSTRUCTION, MISTRAL_CHAT_TEMPLATE
from raftune.config import TinySpec
from raftune.manifest import TINY_FILE
from raftune.packaged import cache_root

BUILDER_VERSION = 1  # bump when the recipe below changes, so old caches are not reused


def train_tokenizer(texts: list[str], folder: Path, vocab_size: int) -> None:
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(texts), model_prefix=str(folder / "tokenizer"), model_type="bpe",
        vocab_size=vocab_size, hard_vocab_limit=False, byte_fallback=True, character_coverage=1.0, split_digits=True,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, control_symbols=["[INST]", "[/INST]"],
        # Mistral's normaliser keeps text as it is: no NFKC, no whitespace squeezing, a leading "▁".
        normalization_rule_name="identity", remove_extra_whitespaces=False, add_dummy_prefix=False,
        allow_whitespace_only_pieces=True, max_sentence_length=1 << 16, num_threads=1, minloglevel=2,
    )


def load_sp_tokenizer(folder: Path):
    from transformers import LlamaTokenizer

    # from_pretrained converts tokenizer.model properly; LlamaTokenizer(vocab_file=...) would silently give a
    # 3-token vocabulary under transformers 5.
    tokenizer = LlamaTokenizer.from_pretrained(str(folder), legacy=False, add_bos_token=True, add_eos_token=False,
                                               add_prefix_space=False)
    tokenizer.chat_template = MISTRAL_CHAT_TEMPLATE
    return tokenizer


def _pretrain(model, tokenizer, texts: list[str], spec: TinySpec) -> list[float]:
    """Next-token pre-training on the concatenated documents, each wrapped in <s> ... </s>."""
    ids = []
    for text in texts:
        ids += [tokenizer.bos_token_id] + tokenizer(text, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    stream = torch.tensor(ids)
    seq_len = min(spec.pretrain_seq_len, len(ids) // 2)  # a very small corpus gives shorter windows
    generator = torch.Generator().manual_seed(spec.seed)
    optimizer = torch.optim.AdamW(model.parameters(), lr=spec.pretrain_lr, weight_decay=0.01)
    warmup = max(1, spec.pretrain_steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: min((s + 1) / warmup, 0.5 * (
        1 + math.cos(math.pi * s / spec.pretrain_steps))))
    losses = []
    model.train()
    for _ in tqdm(range(spec.pretrain_steps), desc="pre-training tiny model", unit="step"):
        starts = torch.randint(0, len(stream) - seq_len, (spec.pretrain_batch,), generator=generator)
        batch = torch.stack([stream[s:s + seq_len] for s in starts])
        loss = model(input_ids=batch, labels=batch).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    model.eval()
    return losses


def build(folder: Path, documents: list[str], extra_texts: list[str], spec: TinySpec) -> None:
    """Write a complete HF model folder (safetensors, tokenizer.json + tokenizer.model, chat template) to `folder`."""
    from transformers import GenerationConfig, MistralConfig, MistralForCausalLM

    started = time.time()
    folder.mkdir(parents=True, exist_ok=True)
    train_tokenizer(documents + extra_texts, folder, spec.vocab_size)
    tokenizer = load_sp_tokenizer(folder)
    torch.manual_seed(spec.seed)
    config = MistralConfig(
        vocab_size=len(tokenizer), hidden_size=spec.hidden_size, intermediate_size=spec.intermediate_size,
        num_hidden_layers=spec.num_hidden_layers, num_attention_heads=spec.num_attention_heads,
        num_key_value_heads=spec.num_key_value_heads, max_position_embeddings=spec.max_position_embeddings,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=None,
        tie_word_embeddings=False, sliding_window=None, rope_theta=10000.0,
    )
    model = MistralForCausalLM(config)
    losses = _pretrain(model, tokenizer, documents, spec) if spec.pretrain_steps else []
    model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id)
    model.save_pretrained(str(folder))
    tokenizer.save_pretrained(str(folder))
    (folder / TINY_FILE).write_text(json.dumps({
        "spec": asdict(spec), "builder_version": BUILDER_VERSION, "pretrain_loss_first": losses[:1],
        "pretrain_loss_last": losses[-1:], "seconds": round(time.time() - started, 1)}, indent=2))


def tiny_model(documents: list[str], extra_texts: list[str] = (), spec: TinySpec | None = None,
               cache: Path | None = None) -> Path:
    """Return the folder of the tiny model for these texts, building it once."""
    spec = spec or TinySpec()
    key = hashlib.sha256(json.dumps([documents, list(extra_texts), asdict(spec), BUILDER_VERSION,
                                     INSTRUCTION]).encode()).hexdigest()[:16]
    root = cache or cache_root()
    folder = root / f"tiny-mistral-{key}"
    if (folder / TINY_FILE).is_file():
        return folder
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{folder.name}.", dir=root))
    try:
        print(f"building the tiny base model (once; cached in {folder})")
        build(tmp, documents, list(extra_texts), spec)
        if folder.exists():  # built meanwhile by another process
            shutil.rmtree(tmp)
        else:
            os.replace(tmp, folder)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return folder
