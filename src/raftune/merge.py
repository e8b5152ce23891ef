"""`raftune merge`: fold the LoRA adapter into full-precision base weights.

Two honest methods:
  pristine     the adapter's delta added to the original 16/32-bit base weights (what the base checkpoint holds);
  dequantized  the delta added to the base as the adapter saw it in training: the NF4 weights, dequantised.
A third, `--unsafe-4bit`, merges into the 4-bit model itself: peft adds the delta to weights that were rounded to
16 NF4 levels and rounds the sum again, which can erase most of what finetuning changed (one of the causes of the
seed's collapse after export). It exists to reproduce that failure, and is refused without the flag.

Every merge writes `merge_report.json`: per layer, the size of the LoRA delta and how far each method's weights
are from the pristine merge, both relative to the weight's norm.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
import yaml

from raftune import RaftuneError
from raftune.config import MERGE_METHODS, MergeConfig, RunConfig
from raftune.manifest import Stage, base_provenance, make_dir, write_json
from raftune.models import load_model, load_tokenizer, resolve_base, save_tokenizer


def adapter_training_setup(adapter_dir) -> tuple[str, dict]:
    """The base folder/id and the bitsandbytes settings the adapter was trained with."""
    adapter_dir = Path(adapter_dir)
    if not (adapter_dir / "adapter_config.json").is_file():
        raise RaftuneError(f"{adapter_dir}: no adapter_config.json (expected a PEFT adapter folder)")
    base = json.loads((adapter_dir / "adapter_config.json").read_text())["base_model_name_or_path"]
    recipe = adapter_dir / "config.yaml"
    quantization = (yaml.safe_load(recipe.read_text()).get("quantization") or {}) if recipe.is_file() else {}
    return base, quantization


def _dequantized_linears(base: str, quantization: dict, adapter_dir=None) -> dict[str, torch.Tensor]:
    """Layer name -> fp32 weight of every 4-bit linear layer, dequantised; with `adapter_dir`, after peft merged the
    adapter into the 4-bit weights (and rounded them again)."""
    import bitsandbytes as bnb
    from peft import PeftModel

    model = load_model(base, quantization)
    if adapter_dir is not None:
        model = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload(safe_merge=True)
    return {name: bnb.functional.dequantize_4bit(m.weight.data, m.weight.quant_state).float()
            for name, m in model.named_modules() if isinstance(m, bnb.nn.Linear4bit)}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).norm() / b.float().norm())


def merge(adapter_dir, out_dir, method: str = MergeConfig.method, unsafe_4bit: bool = False, base: str | None = None,
          dtype: torch.dtype = torch.float32) -> dict:
    """Merge, write the HF folder (with the training tokenizer and chat template) atomically; return the report."""
    from peft import PeftModel
    from peft.tuners.lora import LoraLayer

    if method not in MERGE_METHODS:
        raise RaftuneError(f"unknown merge method '{method}' (expected one of {', '.join(MERGE_METHODS)})")
    trained_base, quantization = adapter_training_setup(adapter_dir)
    base = base or trained_base
    if unsafe_4bit and not quantization:
        raise RaftuneError(f"{adapter_dir}: --unsafe-4bit needs an adapter trained on a 4-bit base")
    out_dir = Path(out_dir)
    base_model = load_model(base, None, dtype)
    if getattr(base_model, "is_loaded_in_4bit", False) and not unsafe_4bit:
        raise RaftuneError(f"{base} is stored in 4-bit: merging into it rounds the LoRA delta away (the seed's "
                           "collapse); give the full-precision base with --base, or --unsafe-4bit to do it anyway")
    model = PeftModel.from_pretrained(base_model, str(adapter_dir))
    # The NF4 view of the base (and, for --unsafe-4bit, the merge inside the 4-bit model), for the report and the
    # methods that need it; without quantisation in training, both methods are the same.
    dequantized = _dequantized_linears(base, quantization) if quantization else {}
    merged_4bit = _dequantized_linears(base, quantization, adapter_dir) if unsafe_4bit else {}
    layers = []
    for name, module in model.named_modules():
        if not isinstance(module, LoraLayer):
            continue
        key = name.removeprefix("base_model.model.")
        weight = module.base_layer.weight.data
        delta = module.get_delta_weight("default")
        pristine = weight.float() + delta.float()
        row = {"layer": key, "lora_delta": float(delta.float().norm() / weight.float().norm())}
        if key in dequantized:
            row["dequantized_vs_pristine"] = _rel(dequantized[key] + delta.float(), pristine)
            if method == "dequantized":
                module.base_layer.weight.data = dequantized[key].to(weight.dtype)
        if key in merged_4bit:
            row["unsafe_4bit_vs_pristine"] = _rel(merged_4bit[key], pristine)
        layers.append(row)
    merged = model.merge_and_unload()
    if unsafe_4bit:
        modules = dict(merged.named_modules())
        for key, weight in merged_4bit.items():
            modules[key].weight.data = weight.to(dtype)
    tmp = make_dir(out_dir.parent) / (out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    save_tokenizer(load_tokenizer(str(adapter_dir)), str(adapter_dir), tmp)  # the training tokenizer and template
    method_name = "unsafe-4bit" if unsafe_4bit else method
    report = {"base": base, "adapter": str(adapter_dir), "method": method_name, "quantization": quantization,
              "layers": layers, "mean": {k: sum(r[k] for r in layers) / len(layers) for k in layers[0] if k != "layer"}}
    write_json(tmp / "merge_report.json", report)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return report


def describe(report: dict) -> str:
    mean = report["mean"]
    text = f"LoRA delta {mean['lora_delta']:.2e} of the weight norm on average"
    if "dequantized_vs_pristine" in mean:
        text += f"; dequantized vs pristine merge {mean['dequantized_vs_pristine']:.2e}"
    if "unsafe_4bit_vs_pristine" in mean:
        text += f"; 4-bit merge vs pristine {mean['unsafe_4bit_vs_pristine']:.2e}"
    return text


def run(config: RunConfig):
    adapter_dir = config.stage_dir("train") / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise RaftuneError(f"no adapter at {adapter_dir}; run `raftune train` first")
    base = resolve_base(config)
    stage = Stage(config, "merge", {**base_provenance(base), "adapter": str(adapter_dir), "method": config.merge.method})
    out = stage.dir / "model"
    report = merge(adapter_dir, out, config.merge.method, base=base)
    stage.outputs = {"model": str(out), "method": config.merge.method, "mean": report["mean"]}
    stage.finish()
    print(f"merge: adapter folded into the {config.merge.method} base -> {stage.outputs['model']} ({describe(report)})")
    return stage.dir / "model"
