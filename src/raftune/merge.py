"""`raftune merge`: fold the LoRA adapter into the base weights in full precision.

Merging into the 4-bit model would add the LoRA delta to weights that were rounded to 16 NF4 levels and then
round again: one of the known causes of a finetuned model that loses its quality after export. raftune merges
into the original 16/32-bit weights instead.
"""

from __future__ import annotations

import shutil

import torch

from raftune import RaftuneError
from raftune.config import RunConfig
from raftune.manifest import Stage
from raftune.models import load_model, load_tokenizer, resolve_base, save_tokenizer


def merge(base: str, adapter_dir, out_dir, dtype: torch.dtype = torch.float32):
    from peft import PeftModel

    model = load_model(base, quantization=None, dtype=dtype)
    if getattr(model, "is_loaded_in_4bit", False):
        raise RaftuneError("refusing to merge into a 4-bit model: merge into the full-precision base instead")
    merged = PeftModel.from_pretrained(model, str(adapter_dir)).merge_and_unload()
    tmp = out_dir.with_name(out_dir.name + ".partial")
    shutil.rmtree(tmp, ignore_errors=True)
    merged.save_pretrained(str(tmp))
    save_tokenizer(load_tokenizer(str(adapter_dir)), str(adapter_dir), tmp)  # the training tokenizer and template
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir


def run(config: RunConfig):
    adapter_dir = config.stage_dir("train") / "adapter"
    if not (adapter_dir / "adapter_config.json").is_file():
        raise RaftuneError(f"no adapter at {adapter_dir}; run `raftune train` first")
    base = resolve_base(config)
    stage = Stage(config, "merge", {"base": base, "adapter": str(adapter_dir)})
    out = merge(base, adapter_dir, stage.dir / "model")
    stage.outputs = {"model": str(out), "method": "pristine (full-precision base + adapter)"}
    stage.finish()
    print(f"merge: adapter folded into the full-precision base -> {out}")
    return out
