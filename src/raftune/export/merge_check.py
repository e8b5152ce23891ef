"""Which merged model is the model that was trained? Each merge's logits against the QLoRA model itself.

The reference is the base as training saw it (NF4 when the recipe quantised it) with the adapter attached; every
merged folder is run on the same held-out prompts and compared position by position with `fidelity.logit_stats`.
"""

from __future__ import annotations

import numpy as np
import torch

from raftune.chat import encode, render_prompt
from raftune.export.fidelity import logit_stats
from raftune.merge import adapter_training_setup
from raftune.models import load_model, load_tokenizer


def _logits(model, ids: list[int]) -> np.ndarray:
    with torch.no_grad():
        return model(torch.tensor([ids])).logits[0].float().numpy()


def agreement_with_trained(adapter_dir, merged: dict, rows, prompts: int = 4) -> dict:
    """{name: {NMSE vs trained, KL mean, top-1 agreement}} for each merged folder in `merged` (name -> folder), on
    the first `prompts` RAFT rows (question + documents)."""
    from peft import PeftModel

    base, quantization = adapter_training_setup(adapter_dir)
    tokenizer = load_tokenizer(str(adapter_dir))
    ids = [encode(tokenizer, render_prompt(tokenizer, r["question"], r["documents"])) for r in list(rows)[:prompts]]
    trained = PeftModel.from_pretrained(load_model(base, quantization), str(adapter_dir)).eval()
    reference = [_logits(trained, i) for i in ids]
    table = {}
    for name, folder in merged.items():
        model = load_model(str(folder)).eval()
        stats = [logit_stats(ref, _logits(model, i)) for ref, i in zip(reference, ids)]
        table[name] = {"NMSE vs trained": sum(s["sq_err"] for s in stats) / sum(s["sq_ref"] for s in stats),
                       "KL mean": float(np.mean([k for s in stats for k in s["kl"]])),
                       "top-1 agreement": float(np.mean([t for s in stats for t in s["top1"]]))}
    return table
