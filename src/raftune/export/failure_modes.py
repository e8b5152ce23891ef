"""The seed's GGUF failure modes, reproduced on purpose, so that tests can prove the fidelity report catches each.

Prompt-side mistakes are modes of `fidelity.compare` (raw prompt without the chat template, a doubled BOS,
control tokens tokenised as text). File- and weight-side ones are made here from a good model or GGUF:
- `broken_qk_layout`: q/k weights left in Hugging Face's rotary layout (llama.cpp expects them permuted);
- `control_tokens_as_text`: [INST]/[/INST] typed as normal tokens in the GGUF's vocabulary;
- `overflowing_copy`: a bf16 model holding values beyond float16's range (65504), which an f16 export turns into inf;
- `PadIsEosCollator`: training with pad token == EOS and a collator that masks labels by pad token id, so the
  EOS that ends every answer is never a label and the model never learns to stop;
- merging into the 4-bit model is `raftune merge --unsafe-4bit` (see raftune/merge.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from raftune import merge, train
from raftune.data.retrieval import build_retriever
from raftune.export import fidelity
from raftune.export.stage import export, references
from raftune.manifest import write_json
from raftune.models import load_tokenizer, resolve_base, save_tokenizer


def rewrite_gguf(src, dst, tensor_fn=None, token_types: dict[str, int] | None = None) -> Path:
    """Copy a GGUF with the `gguf` writer, changing tensors (`tensor_fn(name, array) -> array`) or token types."""
    import gguf

    reader = gguf.GGUFReader(str(src))
    arch = reader.fields[gguf.Keys.General.ARCHITECTURE].contents()
    writer = gguf.GGUFWriter(str(dst), arch)
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    for field in reader.fields.values():
        if field.name == gguf.Keys.General.ARCHITECTURE or field.name.startswith("GGUF."):
            continue  # written by the writer itself
        value = field.contents()
        if field.name == "tokenizer.ggml.token_type" and token_types:
            value = [token_types.get(tok, kind) for tok, kind in zip(tokens, value)]
        kind = field.types[0]
        writer.add_key_value(field.name, value, kind,
                             sub_type=field.types[-1] if kind == gguf.GGUFValueType.ARRAY else None)
    for tensor in reader.tensors:
        data = np.array(tensor.data)
        if tensor_fn is not None:
            data = tensor_fn(tensor.name, data)
        writer.add_tensor(tensor.name, data, raw_dtype=tensor.tensor_type)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return Path(dst)


def _unpermute(weights: np.ndarray, heads: int) -> np.ndarray:
    """Undo llama.cpp's q/k permutation: back to the HF rotary layout (halves instead of interleaved pairs)."""
    return weights.reshape(heads, weights.shape[0] // heads // 2, 2, *weights.shape[1:]).swapaxes(1, 2).reshape(
        weights.shape)


def broken_qk_layout(src, dst, n_head: int, n_kv_head: int) -> Path:
    def fix(name, data):
        if name.endswith("attn_q.weight"):
            return _unpermute(data, n_head)
        if name.endswith("attn_k.weight"):
            return _unpermute(data, n_kv_head)
        return data

    return rewrite_gguf(src, dst, tensor_fn=fix)


def control_tokens_as_text(src, dst, tokens=("[INST]", "[/INST]")) -> Path:
    import gguf

    return rewrite_gguf(src, dst, token_types={t: int(gguf.TokenType.NORMAL) for t in tokens})


def overflowing_copy(model_dir, out_dir, factor: float = 1e6, layer: int = 0) -> Path:
    """The same function in bf16, with one MLP's up_proj scaled by `factor` and down_proj by 1/factor.

    The product is unchanged (the MLP is linear in up_proj), and bf16 holds the large values; float16 does not."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(model_dir), dtype=torch.float32)
    mlp = model.model.layers[layer].mlp
    with torch.no_grad():
        mlp.up_proj.weight.mul_(factor)
        mlp.down_proj.weight.div_(factor)
    model.to(torch.bfloat16).save_pretrained(str(out_dir))
    save_tokenizer(load_tokenizer(str(model_dir)), str(model_dir), out_dir)
    return Path(out_dir)


class PadIsEosCollator:
    """The common mistake, with transformers' own `DataCollatorForLanguageModeling`: the tokenizer's pad token set
    to EOS, and labels masked where the token id equals the pad id, which masks every EOS. The prompt stays masked
    as in raftune's `MaskedCollator`, so the id-based masking is the only difference (use it as a Trainer's
    `data_collator`)."""

    def __init__(self, tokenizer):
        import copy

        from transformers import DataCollatorForLanguageModeling

        tokenizer = copy.deepcopy(tokenizer)
        tokenizer.pad_token, tokenizer.padding_side = tokenizer.eos_token, "right"
        self.library = DataCollatorForLanguageModeling(tokenizer, mlm=False)

    def __call__(self, examples: list[dict]) -> dict:
        batch = self.library([{"input_ids": e["input_ids"]} for e in examples])  # labels -100 wherever id == EOS
        for row, e in enumerate(examples):  # and on the prompt (trl hands over labels, raftune a completion mask)
            keep = e["completion_mask"] if "completion_mask" in e else [label != -100 for label in e["labels"]]
            batch["labels"][row, :len(keep)][~torch.tensor(keep, dtype=torch.bool)] = -100
        return batch


def run_all(config) -> dict:
    """Every failure mode above made from the recipe's run and measured by the same fidelity report as a good
    export: {case: {tokens equal, ..., caught}}, also written to <run>/failure-modes/failure_modes.json.

    Needs the run's merged model and its f16 GGUF (`raftune merge`, `raftune export`); trains the recipe once more
    with `PadIsEosCollator` (into the run `<run>-pad-eos`, reused when it exists)."""
    import dataclasses
    import json
    import shutil

    model_dir, export_dir = config.stage_dir("merge") / "model", config.stage_dir("export")
    f16, adapter = export_dir / "model-f16.gguf", config.stage_dir("train") / "adapter"
    work = config.stage_dir("failure-modes")
    work.mkdir(parents=True, exist_ok=True)
    prompts = fidelity.fidelity_prompts(load_tokenizer(str(model_dir)), config.evaluate.testset,
                                        build_retriever(config), config.evaluate.top_k, config.export.fidelity_prompts)
    hf_config = json.loads((model_dir / "config.json").read_text())
    # case -> (HF reference folder, GGUF, prompt mode)
    cases = {"correct (template, f16)": (model_dir, f16, "template")}
    for mode in ("raw", "double-bos", "text-control"):
        cases[f"prompt: {mode}"] = (model_dir, f16, mode)
    cases["GGUF: q/k in HF layout"] = (model_dir, broken_qk_layout(
        f16, work / "qk.gguf", hf_config["num_attention_heads"], hf_config["num_key_value_heads"]), "template")
    cases["GGUF: [INST] typed as text"] = (model_dir, control_tokens_as_text(f16, work / "ctl.gguf"), "template")
    big = overflowing_copy(model_dir, work / "bf16-large")
    export(big, work / "bf16-large-f16.gguf", "f16")
    cases["weights: bf16 -> f16 overflow"] = (big, work / "bf16-large-f16.gguf", "template")
    # the unsafe 4-bit merge is judged against the dequantized merge: the same function without the second rounding
    merge.merge(adapter, work / "dequantized", "dequantized")
    merge.merge(adapter, work / "unsafe-4bit", unsafe_4bit=True)
    export(work / "unsafe-4bit", work / "unsafe-4bit-f16.gguf", "f16")
    cases["merge: into the 4-bit model"] = (work / "dequantized", work / "unsafe-4bit-f16.gguf", "template")
    pad_eos = dataclasses.replace(config, run=f"{config.run}-pad-eos")
    if not (pad_eos.stage_dir("train") / "adapter" / "adapter_config.json").is_file():
        shutil.copytree(config.stage_dir("data"), pad_eos.stage_dir("data"), dirs_exist_ok=True)
        train.run(pad_eos, make_collator=PadIsEosCollator)
    merge.run(pad_eos)
    export(pad_eos.stage_dir("merge") / "model", work / "pad-eos-f16.gguf", "f16")
    cases["training: pad token == EOS"] = (pad_eos.stage_dir("merge") / "model", work / "pad-eos-f16.gguf", "template")
    held_out = references(config)  # held-out RAFT rows: P(EOS) right after each reference answer
    base_eos = fidelity.base_eos_probability(resolve_base(config), held_out)  # what finetuning may not push down

    results = {}
    for name, (hf, gguf, mode) in cases.items():
        report = fidelity.compare(hf, gguf, prompts, mode=mode, greedy_tokens=config.export.greedy_tokens,
                                  references=held_out) | {"base_eos_probability": base_eos}
        results[name] = {"tokens equal": report["tokenization_match"], "BOS as HF": report["bos_as_hf"],
                         "[INST] parsed": report["control_tokens_parsed"], "q/k error": report.get("qk_error"),
                         "top-1": report["top1_agreement"],
                         "NMSE": report["nmse"], "KL mean": report["kl_mean"], "greedy": report["greedy_agreement"],
                         "EOS agrees": report["eos_agreement"], "P(EOS) after answers": report["eos_probability"],
                         "caught": "; ".join(fidelity.gate(report)) or "passes"}
    write_json(work / "failure_modes.json", results)
    return results
