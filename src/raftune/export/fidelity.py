"""`raftune fidelity`: does the GGUF behave like the Hugging Face model it was made from?

The seed's finetuned model scored 0.62 in Hugging Face and 0.06 after GGUF conversion, and nothing told them
why. This report compares the two on the prompts the model will really see (the test set's questions with their
retrieved context, rendered with the training chat template):

- tokenisation parity: llama.cpp's ids equal the HF tokenizer's, as many BOS as HF (exactly one with Mistral's
  template; ChatML uses its BOS `<|im_start|>` once per turn), the template's special tokens (`[INST]`/`[/INST]`,
  `<|im_start|>`/`<|im_end|>`) parsed as single control tokens;
- logits at up to `POSITIONS` evenly spaced positions of each prompt, its last included: NMSE, KL divergence (mean
  and 99th percentile), top-1 agreement. HF projects only those positions; every position would cost seconds and
  hundreds of MB a prompt with a 262k vocabulary (Gemma's f16 demo GGUF: top-1 99.74 % over the 768 positions of
  6 prompts, 99.87 % over all 1,548).
  Where the token sequences differ, positions do not line up and only the first answer token's distribution
  (the last prompt position) is compared;
- greedy continuation over `greedy_tokens` tokens: the share that agrees before the first divergence, and
  whether EOS comes where the HF model puts it;
- the layout of the attention's q/k weights (`qk_layout`), read from the file: for llama and mistral, llama.cpp's
  rope rotates adjacent pairs of a head's dimensions where Hugging Face's rotates its two halves, so the converter
  reorders the rows of attn_q/attn_k, and a GGUF without that reordering computes another attention. Its logits
  need not show it: where attention is still nearly uniform (the tests' tiny model), scrambled queries and keys
  change little, and top-1 agreement lands just below the gate's 99 % on one CPU and above it on another. The
  weights tell it apart on any CPU: each GGUF tensor is compared with the HF one in the expected row order;
- with `references` (held-out RAFT rows: question, documents, reference answer): the probability of EOS right
  after each reference answer, teacher-forced, in HF and in the GGUF. HF and GGUF agree with each other on a
  model that never learned to stop (pad token == EOS, masked out of every label), so the comparison is with the
  untouched base instead (`base_eos_probability`): training on answers that end in EOS raises it, training with
  EOS masked pushes it down, and the gate fails when it fell below the base's by more than `max_eos_drop`.

`mode` says how the GGUF side is prompted, so that the seed's prompting mistakes can be reproduced on purpose:
`template` (right: the rendered prompt, its BOS, control tokens parsed), `raw` (no chat template at all),
`double-bos` (the runtime adds a BOS before the rendered prompt's own) and `text-control` (control tokens
tokenised as plain text).
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from raftune import RaftuneError
from raftune.chat import encode, render_example, render_prompt, user_message
from raftune.config import ExportConfig
from raftune.data.formats import read_records
from raftune.data.testset import load_testset
from raftune.gguf_file import QK_TENSOR, qk_tensor, read_gguf
from raftune.llama_runtime import gguf_logits, open_gguf
from raftune.manifest import make_dir
from raftune.models import load_model, load_tokenizer

MODES = ("template", "raw", "double-bos", "text-control")
# The gate of `raftune export`: NMSE and top-1 for the lossless types; tokenisation and the EOS check for every
# type. Quantised types are not held to absolute figures (small models lose more to quantisation than 7B ones): each
# is reported beside the same type made from the untouched base (`against_base`, QUANT_TOLERANCE).
# The thresholds are the recipe's `export:` values (config.ExportConfig); these are their defaults.
DEFAULT_GATE = {"require_tokenization_match": True, **ExportConfig().limits()}
LOSSLESS = {"f32", "f16", "bf16"}
QUANT_TOLERANCE = {"top1_points": 0.01, "kl_ratio": 1.5}
POSITIONS = 128  # logits compared per prompt
# attn_q/attn_k against the HF weights in the row order llama.cpp's rope expects: the largest relative error allowed.
# Measured (SmolLM2-135M, 60 tensors): f16 1.9e-4, q8_0 6.3e-3, q4_k_m 0.051, q2_k 0.099; a wrong row order
# 1.35-1.42 on SmolLM2, Gemma 3 270M and the tiny model (about sqrt(2): rows unrelated to the ones they replace).
QK_MAX_ERROR = 0.5


def gguf_type(path) -> str:
    from gguf import LlamaFileType

    file_type = read_gguf(path)["file_type"]
    if file_type is None:
        return "unknown"
    name = LlamaFileType(int(file_type)).name  # e.g. MOSTLY_Q4_K_M
    return {"ALL_F32": "f32"}.get(name, name.removeprefix("MOSTLY_").lower())


def fidelity_prompts(tokenizer, testset: str, retriever, top_k: int, limit: int | None = None):
    """(question, documents) of the first phrasing of each test, with the context `retriever` (the recipe's,
    `build_retriever`) finds for it: as evaluation sees them."""

    items, seen = [], set()
    for item in load_testset(testset):
        if item.test_id not in seen:
            seen.add(item.test_id)
            items.append(item)
    items = items[:limit] if limit else items
    contexts = retriever.search([i.question for i in items], top_k)
    return [(i.question, [c.text for c in ctx]) for i, ctx in zip(items, contexts)]


def _gguf_ids(llm, tokenizer, question: str, documents: list[str], mode: str) -> list[int]:
    prompt = render_prompt(tokenizer, question, documents)
    if mode == "template":
        return llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=True)
    if mode == "double-bos":
        return llm.tokenize(prompt.encode("utf-8"), add_bos=True, special=True)
    if mode == "text-control":
        return llm.tokenize(prompt.encode("utf-8"), add_bos=False, special=False)
    if mode == "raw":  # the seed's llama.cpp test: the user text alone, the runtime's BOS, no [INST]
        return llm.tokenize(user_message(question, documents).encode("utf-8"), add_bos=True, special=True)
    raise RaftuneError(f"unknown fidelity mode '{mode}' (expected one of {', '.join(MODES)})")


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    x = x - x.max(axis=-1, keepdims=True)
    return x - np.log(np.exp(x).sum(axis=-1, keepdims=True))


def logit_stats(hf: np.ndarray, cpp: np.ndarray, chunk: int = 8) -> dict:
    """Per-position comparison of two [positions, vocab] logit arrays (HF is the reference), `chunk` positions at a
    time: float64 copies of whole prompts' logits would take hundreds of MB with a 49k-262k vocabulary."""
    if not np.isfinite(cpp).all():
        n = len(hf)
        return {"sq_err": float("inf"), "sq_ref": float((hf.astype(np.float64) ** 2).sum()), "kl": [float("inf")] * n,
                "top1": [False] * n}
    sq_err, sq_ref, kl = 0.0, 0.0, []
    for start in range(0, len(hf), chunk):
        p, q = hf[start:start + chunk].astype(np.float64), cpp[start:start + chunk].astype(np.float64)
        log_p, log_q = _log_softmax(p), _log_softmax(q)
        kl += (np.exp(log_p) * (log_p - log_q)).sum(axis=-1).tolist()
        sq_err, sq_ref = sq_err + float(((p - q) ** 2).sum()), sq_ref + float((p ** 2).sum())
    return {"sq_err": sq_err, "sq_ref": sq_ref, "kl": kl, "top1": (hf.argmax(-1) == cpp.argmax(-1)).tolist()}


def merges_against_adapter(adapter: Path, merged: dict[str, Path], rows) -> dict[str, dict]:
    """How closely each merged folder reproduces the trained model (base + adapter, as trained) on `rows`' prompts:
    NMSE of the logits, mean KL and top-1 agreement over every prompt position, by merge name."""
    from peft import PeftModel

    from raftune.merge import adapter_training_setup

    base, quantization = adapter_training_setup(adapter)
    tokenizer = load_tokenizer(str(adapter))
    prompts = [encode(tokenizer, render_prompt(tokenizer, r["question"], r["documents"])) for r in rows]

    def logits(model, ids):
        with torch.no_grad():
            return model(torch.tensor([ids])).logits[0].float().numpy()

    trained = PeftModel.from_pretrained(load_model(base, quantization), str(adapter)).eval()
    reference = [logits(trained, ids) for ids in prompts]
    table = {}
    for name, folder in merged.items():
        model = load_model(str(folder)).eval()
        stats = [logit_stats(ref, logits(model, ids)) for ref, ids in zip(reference, prompts)]
        table[name] = {"NMSE vs trained": sum(s["sq_err"] for s in stats) / sum(s["sq_ref"] for s in stats),
                       "KL mean": float(np.mean([k for s in stats for k in s["kl"]])),
                       "top-1 agreement": float(np.mean([t for s in stats for t in s["top1"]]))}
    return table


def llama_cpp_row_order(weights: np.ndarray, heads: int) -> np.ndarray:
    """HF's q/k rows reordered for llama.cpp's NORM rope: per head, the rows of its two halves interleaved (what
    convert_hf_to_gguf.py's LlamaModel.permute does)."""
    return weights.reshape(heads, 2, weights.shape[0] // heads // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def _relative_error(x: np.ndarray, reference: np.ndarray) -> float:
    """||x - reference|| / ||reference|| (Frobenius norms), in float64."""
    reference = reference.astype(np.float64)
    return float(np.sqrt(np.sum((x - reference) ** 2) / np.sum(reference ** 2)))


HF_QK = re.compile(r"(?:^|\.)layers\.(\d+)\.self_attn\.([qk])_proj\.weight")


def qk_layout(model, gguf_path, rope_type: int) -> dict:
    """Every attn_q/attn_k of the GGUF against the HF model's q_proj/k_proj, in the row order llama.cpp's rope
    (`rope_type`, as llama.cpp reports it for the file) expects and in the other one: the relative error against
    each. The layout is as expected when every tensor is within QK_MAX_ERROR of that order. No q/k tensors (a fused
    qkv projection): `qk_layout_as_expected` is None, nothing is compared."""
    from llama_cpp import LLAMA_ROPE_TYPE_NORM  # llama, mistral: rotates adjacent pairs of a head's dimensions

    config = model.config.get_text_config()
    heads = {"q": config.num_attention_heads, "k": config.num_key_value_heads}
    hf = {m.groups(): tensor for name, tensor in model.state_dict().items() if (m := HF_QK.search(name))}
    expected_err, other_err = [], []
    for name in read_gguf(gguf_path)["qk_tensors"]:
        layer, which = QK_TENSOR.fullmatch(name).groups()
        if (layer, which) not in hf:
            continue
        weights = hf[layer, which].float().numpy()
        reordered = llama_cpp_row_order(weights, heads[which])
        expected, other = (reordered, weights) if rope_type == LLAMA_ROPE_TYPE_NORM else (weights, reordered)
        gguf = qk_tensor(gguf_path, name)
        if gguf.shape != weights.shape:
            raise RaftuneError(f"{gguf_path}: {name} is {list(gguf.shape)}, the HF model's {which}_proj of layer {layer} "
                               f"{list(weights.shape)}: the GGUF was not made from this model")
        expected_err.append(_relative_error(gguf, expected))
        other_err.append(_relative_error(gguf, other))
    if not expected_err:
        return {"qk_tensors": 0, "qk_layout_as_expected": None}
    return {"qk_tensors": len(expected_err), "qk_error": max(expected_err), "qk_error_other_layout": min(other_err),
            "qk_layout_as_expected": max(expected_err) <= QK_MAX_ERROR}


def _greedy_hf(model, ids: list[int], n: int, eos: int) -> list[int]:
    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), attention_mask=torch.ones(1, len(ids), dtype=torch.long),
                             max_new_tokens=n, do_sample=False, eos_token_id=eos, pad_token_id=eos)
    return out[0, len(ids):].tolist()


def _greedy_cpp(llm, ids: list[int], n: int, eos: int) -> list[int]:
    llm.reset()
    out = []
    for token in llm.generate(ids, temp=0.0, top_k=1, repeat_penalty=1.0, reset=True):
        out.append(int(token))
        if token == eos or len(out) >= n:
            break
    return out


def _agreement(a: list[int], b: list[int], n: int) -> float:
    same = 0
    for x, y in zip(a, b):
        if x != y:
            break
        same += 1
    if same == len(a) == len(b):  # identical, possibly both stopped early at EOS
        return 1.0
    return same / n


def _eos_probability(logits: np.ndarray, eos: int) -> float:
    return float(np.exp(_log_softmax(logits[None])[0, eos]))


def eos_after_references(model, tokenizer, references, llm=None) -> dict:
    """Mean P(EOS) right after each reference answer (teacher-forced) in HF, and in the GGUF when `llm` is given."""
    eos, hf_p, cpp_p = tokenizer.eos_token_id, [], []
    for question, documents, answer in references:
        ids = encode(tokenizer, "".join(render_example(tokenizer, question, documents, answer)))
        end = len(ids) - 1 - ids[::-1].index(eos)  # the answer's EOS (ChatML puts a newline after it)
        with torch.no_grad():
            hf_p.append(_eos_probability(model(torch.tensor([ids[:end]]), logits_to_keep=1).logits[0, -1].float().numpy(),
                                         eos))
        if llm is not None:
            cpp_p.append(_eos_probability(gguf_logits(llm, ids[:end], [end - 1])[0], eos))
    report = {"eos_references": len(hf_p), "eos_probability_hf": float(np.mean(hf_p))}
    return report | ({"eos_probability": float(np.mean(cpp_p))} if llm is not None else {})


def base_eos_probability(base_dir, references) -> float:
    """The untouched base's P(EOS) after the same reference answers: what finetuning should raise, never lower."""

    model = load_model(str(base_dir)).eval()
    return eos_after_references(model, load_tokenizer(str(base_dir)), references)["eos_probability_hf"]


def compare(hf_dir, gguf_path, prompts: list[tuple[str, list[str]]], mode: str = "template",
            greedy_tokens: int = 64, n_ctx: int = 4096,
            references: list[tuple[str, list[str], str]] | None = None) -> dict:
    """The fidelity report of one GGUF against its HF folder on (question, documents) prompts, and on
    (question, documents, answer) references for the EOS check."""
    import llama_cpp

    tokenizer = load_tokenizer(str(hf_dir))
    model = load_model(str(hf_dir)).eval()
    # a context for the longest prompt or reference (HF's count, a margin for the modes that tokenise differently)
    longest = max([len(encode(tokenizer, render_prompt(tokenizer, q, d))) + greedy_tokens for q, d in prompts]
                  + [len(encode(tokenizer, "".join(render_example(tokenizer, *r)))) for r in references or []])
    n_ctx = min(n_ctx, 256 * -(-(longest + 128) // 256))
    llm = open_gguf(gguf_path, n_ctx=n_ctx)
    eos, bos = tokenizer.eos_token_id, tokenizer.bos_token_id
    controls = [tokenizer.convert_tokens_to_ids(t) for t in ("[INST]", "[/INST]") if t in tokenizer.get_vocab()]
    specials = set(tokenizer.all_special_ids) | set(controls)
    per_prompt, sq_err, sq_ref, kls, top1 = [], 0.0, 0.0, [], []
    for question, documents in tqdm(prompts, desc=f"fidelity {Path(gguf_path).name}", unit="prompt"):
        hf_ids = encode(tokenizer, render_prompt(tokenizer, question, documents))
        cpp_ids = _gguf_ids(llm, tokenizer, question, documents, mode)
        if len(cpp_ids) + greedy_tokens > n_ctx:
            raise RaftuneError(f"a fidelity prompt has {len(cpp_ids)} tokens, more than n_ctx={n_ctx} allows")
        same = hf_ids == cpp_ids
        positions = np.unique(np.linspace(0, len(hf_ids) - 1, POSITIONS).round().astype(int)) if same else \
            np.array([len(hf_ids) - 1])
        with torch.no_grad():
            hf = model(torch.tensor([hf_ids]), logits_to_keep=torch.from_numpy(positions)).logits[0].float().numpy()
        cpp = gguf_logits(llm, cpp_ids, positions if same else [len(cpp_ids) - 1])
        stats = logit_stats(hf, cpp)
        sq_err, sq_ref = sq_err + stats["sq_err"], sq_ref + stats["sq_ref"]
        kls += stats["kl"]
        top1 += stats["top1"]
        hf_gen = _greedy_hf(model, hf_ids, greedy_tokens, eos)
        cpp_gen = _greedy_cpp(llm, cpp_ids, greedy_tokens, eos)
        per_prompt.append({
            "question": question, "tokens_hf": len(hf_ids), "tokens_gguf": len(cpp_ids), "tokenization_match": same,
            "bos_count": cpp_ids.count(bos), "bos_count_hf": hf_ids.count(bos),
            "control_tokens_parsed": [t for t in cpp_ids if t in specials] == [t for t in hf_ids if t in specials],
            "positions_compared": len(stats["top1"]), "greedy_agreement": _agreement(hf_gen, cpp_gen, greedy_tokens),
            "eos_hf": hf_gen.index(eos) if eos in hf_gen else None,
            "eos_gguf": cpp_gen.index(eos) if eos in cpp_gen else None,
            "greedy_hf": tokenizer.decode(hf_gen), "greedy_gguf": tokenizer.decode(cpp_gen)})
    eos_check = eos_after_references(model, tokenizer, references, llm) if references else {}
    layout = qk_layout(model, gguf_path, llama_cpp.llama_model_rope_type(llm.model))
    llm.close()
    kl = np.asarray(kls)
    return {
        "gguf": str(gguf_path), "gguf_type": gguf_type(gguf_path), "hf": str(hf_dir), "mode": mode,
        "prompts": len(per_prompt), "positions": len(top1),
        "tokenization_match": all(p["tokenization_match"] for p in per_prompt),
        "bos_as_hf": all(p["bos_count"] == p["bos_count_hf"] for p in per_prompt),
        "control_tokens_parsed": all(p["control_tokens_parsed"] for p in per_prompt),
        "top1_agreement": float(np.mean(top1)), "nmse": sq_err / sq_ref if sq_ref else float("nan"),
        "kl_mean": float(kl.mean()), "kl_p99": float(np.percentile(kl, 99)),
        "greedy_tokens": greedy_tokens, "greedy_agreement": float(np.mean([p["greedy_agreement"] for p in per_prompt])),
        "eos_agreement": float(np.mean([p["eos_hf"] == p["eos_gguf"] for p in per_prompt])),
        **layout, **eos_check, "per_prompt": per_prompt,
    }


def gate(report: dict, thresholds: dict | None = None) -> list[str]:
    """Reasons this GGUF must not pass (empty: it passes). NMSE and top-1 are gated for the lossless types only."""
    limits = {**DEFAULT_GATE, **(thresholds or {})}
    problems = []
    if limits["require_tokenization_match"]:
        if not report["tokenization_match"]:
            problems.append("tokenisation differs from the HF tokenizer's")
        if not report["bos_as_hf"]:
            problems.append("BOS count differs from HF's (a doubled BOS?)")
        if not report["control_tokens_parsed"]:
            problems.append("chat control tokens not parsed as single tokens")
    if report.get("qk_layout_as_expected") is False:
        problems.append(f"attn_q/attn_k rows not in the order llama.cpp's rope expects: relative error "
                        f"{report['qk_error']:.2g} > {QK_MAX_ERROR:g} against it ({report['qk_error_other_layout']:.2g} "
                        "against the other rotary layout; a converter that skipped or repeated the q/k permutation?)")
    if report["gguf_type"] in LOSSLESS:
        if not report["nmse"] <= limits["max_nmse"]:
            problems.append(f"{report['gguf_type']} NMSE {report['nmse']:.3g} > {limits['max_nmse']:g}")
        if not report["top1_agreement"] >= limits["min_top1"]:
            problems.append(f"{report['gguf_type']} top-1 agreement {report['top1_agreement']:.2%} < "
                            f"{limits['min_top1']:.0%}")
    if "base_eos_probability" in report and "eos_probability" in report and \
            not report["eos_probability"] * limits["max_eos_drop"] >= report["base_eos_probability"]:
        problems.append(f"EOS suppressed by training: P(EOS) after the reference answers {report['eos_probability']:.2g}, "
                        f"the untouched base's {report['base_eos_probability']:.2g} (the model will not stop; pad "
                        "token == EOS masked out of the labels?)")
    return problems


def against_base(finetuned: dict, base: dict) -> dict:
    """A quantised GGUF of the finetuned model against the same type made from the untouched base."""
    top1_drop = base["top1_agreement"] - finetuned["top1_agreement"]
    kl_ratio = finetuned["kl_mean"] / base["kl_mean"] if base["kl_mean"] > 0 else float("inf")
    return {"base_top1_agreement": base["top1_agreement"], "base_kl_mean": base["kl_mean"],
            "top1_drop_vs_base": top1_drop, "kl_ratio_vs_base": kl_ratio,
            "within_base_tolerance": bool(top1_drop <= QUANT_TOLERANCE["top1_points"]
                                          and kl_ratio <= QUANT_TOLERANCE["kl_ratio"])}


SUMMARY_KEYS = ["gguf_type", "mode", "prompts", "positions", "tokenization_match", "bos_as_hf", "control_tokens_parsed",
                "qk_layout_as_expected", "qk_error", "top1_agreement", "nmse", "kl_mean", "kl_p99", "greedy_agreement",
                "eos_agreement", "eos_probability_hf", "eos_probability", "base_eos_probability"]


def summary(report: dict) -> dict:
    return {k: report[k] for k in SUMMARY_KEYS if k in report} | {
        k: report[k] for k in ("base_top1_agreement", "base_kl_mean", "within_base_tolerance", "passed") if k in report}


def markdown_table(reports: list[dict]) -> str:
    cols = ["gguf_type", "tokenization_match", "top1_agreement", "nmse", "kl_mean", "kl_p99", "greedy_agreement",
            "eos_agreement", "eos_probability", "base_eos_probability", "passed"]
    fmt = {"top1_agreement": "{:.2%}", "greedy_agreement": "{:.2%}", "eos_agreement": "{:.2%}", "nmse": "{:.2e}",
           "kl_mean": "{:.2e}", "kl_p99": "{:.2e}", "eos_probability": "{:.2g}",
           "base_eos_probability": "{:.2g}"}
    lines = ["| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
    for r in reports:
        lines.append("| " + " | ".join(fmt.get(c, "{}").format(r[c]) if c in r else "" for c in cols) + " |")
    return "\n".join(lines) + "\n"


def plot(reports: list[dict], out_path) -> None:
    """Per-position KL and top-1 agreement, one bar group per GGUF type."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [r["gguf_type"] + ("" if r.get("mode", "template") == "template" else f" ({r['mode']})") for r in reports]
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    axes[0].bar(names, [100 * r["top1_agreement"] for r in reports], color="#4c72b0")
    axes[0].set(title="top-1 agreement with HF (%)", ylim=(0, 100))
    axes[1].bar(names, [max(r["kl_mean"], 1e-12) for r in reports], color="#dd8452")
    axes[1].set(title="mean KL(HF || GGUF), nats", yscale="log")
    axes[2].bar(names, [100 * r["greedy_agreement"] for r in reports], color="#55a868")
    axes[2].set(title="greedy tokens agreeing (%)", ylim=(0, 100))
    for ax in axes:
        ax.tick_params(axis="x", rotation=30)
    fig.tight_layout()
    make_dir(Path(out_path).parent)
    fig.savefig(out_path, dpi=120)
    plt.close(fig)


def load_prompts_file(path) -> list[tuple[str, list[str]]]:
    """JSONL of {"question": str, "documents": [str, ...]} per line."""
    return [(row["question"], row["documents"]) for row in _jsonl_rows(path, ("question", "documents"))]


def load_references_file(path) -> list[tuple[str, list[str], str]]:
    """JSONL of RAFT rows {"question", "documents", "cot_answer"}, e.g. runs/<run>/data/hf_eval.jsonl."""
    return [(row["question"], row["documents"], row["cot_answer"])
            for row in _jsonl_rows(path, ("question", "documents", "cot_answer"))]


def _jsonl_rows(path, fields: tuple[str, ...]) -> list[dict]:
    """The rows of a JSONL (or JSON list) file, read by the data loader, each checked for `fields`."""

    rows, _ = read_records(path)
    for n, row in enumerate(rows):
        if not all(isinstance(row.get(f), list if f == "documents" else str) for f in fields):
            raise RaftuneError(f"{path}: row {n}: expected the fields {', '.join(fields)} (documents a list of "
                               "strings, the others strings)")
    return rows
