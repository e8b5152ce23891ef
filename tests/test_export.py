"""The merged model and its GGUFs: read back equal, tokenised identically, f16 logits equal to transformers'."""

import numpy as np
import pytest
import torch

from raftune import RaftuneError
from raftune.chat import encode, render_prompt
from raftune.data.testset import load_testset
from raftune.export.gguf_check import check_gguf
from raftune.gguf_file import read_gguf
from raftune.llama_runtime import gguf_generate, gguf_logits, open_gguf
from raftune.models import load_model, load_tokenizer

from conftest import MINI


def _paths(mini_run):
    config, _ = mini_run
    return config.stage_dir("merge") / "model", config.stage_dir("export")


def test_gguf_read_back_matches_the_model(mini_run):
    model_dir, export_dir = _paths(mini_run)
    from gguf import GGUFReader
    from safetensors.torch import load_file

    weights = load_file(model_dir / "model.safetensors")
    reader = GGUFReader(str(export_dir / "model-f16.gguf"))
    assert len(reader.tensors) == len(weights)  # every HF tensor has exactly one GGUF tensor
    embed = next(t for t in reader.tensors if t.name == "token_embd.weight")
    # f16 storage of the embedding equals the HF weights rounded to f16, bit for bit
    expected = weights["model.embed_tokens.weight"].to(torch.float16).numpy()
    assert np.array_equal(np.asarray(embed.data).reshape(expected.shape), expected)
    facts = check_gguf(export_dir / "model-q8_0.gguf", model_dir)
    assert facts["control_tokens"] == ["<s>", "</s>", "[INST]", "[/INST]"] and facts["chat_template_equal"]


def _prompts(model_dir, n=6):
    tokenizer = load_tokenizer(str(model_dir))
    items = load_testset(MINI / "testset.json")[:n]
    return tokenizer, [render_prompt(tokenizer, i.question, ["Der Semesterbeitrag beträgt 180 Euro.", "„Zitat“ – Ü"])
                       for i in items]


def test_tokenisation_is_identical_in_llama_cpp(mini_run):
    model_dir, export_dir = _paths(mini_run)
    tokenizer, prompts = _prompts(model_dir)
    llm = open_gguf(export_dir / "model-f16.gguf", n_ctx=1024)
    for prompt in prompts + [prompts[0] + " Antwort: 14 Tage.</s>"]:
        ids = encode(tokenizer, prompt)
        assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids
        assert ids.count(tokenizer.bos_token_id) == 1 and ids[1] == tokenizer.convert_tokens_to_ids("[INST]")
    llm.close()


def test_f16_logits_match_transformers(mini_run):
    model_dir, export_dir = _paths(mini_run)
    tokenizer, prompts = _prompts(model_dir, n=3)
    model = load_model(str(model_dir)).eval()
    llm = open_gguf(export_dir / "model-f16.gguf", n_ctx=1024, logits_all=True)
    for prompt in prompts:
        ids = encode(tokenizer, prompt)
        with torch.no_grad():
            hf = model(torch.tensor([ids])).logits[0].numpy()
        llm.reset()
        llm.eval(ids)
        cpp = np.asarray(llm.scores[: len(ids)])
        nmse = ((hf - cpp) ** 2).sum() / (hf ** 2).sum()
        assert nmse < 1e-4, nmse
        assert (hf.argmax(-1) == cpp.argmax(-1)).mean() >= 0.99
        # the fidelity report's logits at chosen positions only: the same numbers as llama-cpp-python's logits_all
        positions = [0, len(ids) // 2, len(ids) - 1]
        np.testing.assert_allclose(gguf_logits(llm, ids, positions), cpp[positions], rtol=1e-5, atol=1e-5)
    llm.close()


def test_batched_greedy_decoding_gives_each_prompt_its_own_greedy_answer(mini_run):
    model_dir, export_dir = _paths(mini_run)
    tokenizer, prompts = _prompts(model_dir, n=3)
    encoded = [encode(tokenizer, p) for p in prompts]
    single = open_gguf(export_dir / "model-f16.gguf", n_ctx=1024)
    alone = []
    for ids in encoded:  # llama-cpp-python's own greedy completion, one prompt at a time
        out = single.create_completion(ids, max_tokens=12, temperature=0.0, top_k=1, repeat_penalty=1.0)
        alone.append(single.tokenize(out["choices"][0]["text"].encode(), add_bos=False, special=True))
    single.close()
    llm = open_gguf(export_dir / "model-f16.gguf", n_ctx=3 * max(len(ids) + 12 for ids in encoded), n_seq_max=3)
    together = gguf_generate(llm, encoded, 12)
    llm.close()
    assert [len(t) for t in together] == [len(a) for a in alone] and together == alone


def test_corrupt_or_missing_gguf_gives_one_line_error(mini_run, tmp_path):
    _, export_dir = _paths(mini_run)
    truncated = tmp_path / "cut.gguf"
    truncated.write_bytes((export_dir / "model-f16.gguf").read_bytes()[:5000])
    for path in (truncated, tmp_path / "none.gguf"):
        with pytest.raises(RaftuneError) as err:
            read_gguf(path)
        assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_no_partial_files_left(mini_run):
    _, export_dir = _paths(mini_run)
    assert sorted(p.name for p in export_dir.iterdir()) == [
        "base", "fidelity-f16.json", "fidelity-q8_0.json", "fidelity.md", "fidelity.png", "manifest.json",
        "model-f16.Modelfile", "model-f16.gguf", "model-f16.llama-cpp.sh",
        "model-q8_0.Modelfile", "model-q8_0.gguf", "model-q8_0.llama-cpp.sh"]
