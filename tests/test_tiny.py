import sentencepiece as spm
import torch

from raftune.chat import encode, render_example, render_prompt
from raftune.data.corpus import load_corpus
from raftune.models import load_tokenizer
from raftune.tiny import TinySpec, tiny_model

from conftest import MINI

SPEC = TinySpec(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, pretrain_steps=5)


def _texts():
    return [c.text for c in load_corpus(MINI / "corpus")]


def test_tokenizer_has_the_full_vocabulary_and_mistral_special_tokens(tmp_path):
    folder = tiny_model(_texts(), spec=SPEC, cache=tmp_path)
    tokenizer = load_tokenizer(str(folder))
    pieces = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model")).get_piece_size()
    # transformers 5 silently builds a 3-token vocabulary from a bare vocab_file; this one must be complete
    assert len(tokenizer) == pieces > 256
    assert [tokenizer.convert_ids_to_tokens(i) for i in range(5)] == ["<unk>", "<s>", "</s>", "[INST]", "[/INST]"]
    assert tokenizer.tokenize("[INST]Frist[/INST]")[0] == "[INST]"  # a control token is never split
    assert tokenizer.tokenize("Prüfung ß 2024 ✓")  # byte fallback: no <unk> for unseen characters
    assert tokenizer.unk_token_id not in tokenizer("✓ ∑")["input_ids"]


def test_rendered_example_has_one_bos_and_ends_with_eos(tmp_path):
    tokenizer = load_tokenizer(str(tiny_model(_texts(), spec=SPEC, cache=tmp_path)))
    prompt, completion = render_example(tokenizer, "Wie hoch?", ["Dok A", "Dok B"], "180 Euro.")
    ids = encode(tokenizer, prompt + completion)
    assert ids.count(tokenizer.bos_token_id) == 1 and ids[0] == tokenizer.bos_token_id
    assert ids[-1] == tokenizer.eos_token_id and completion == " 180 Euro.</s>"
    assert prompt == render_prompt(tokenizer, "Wie hoch?", ["Dok A", "Dok B"]) and prompt.endswith("[/INST]")


def test_build_is_deterministic_and_cached(tmp_path):
    a = tiny_model(_texts(), spec=SPEC, cache=tmp_path / "a")
    b = tiny_model(_texts(), spec=SPEC, cache=tmp_path / "b")
    assert a.name == b.name
    from safetensors.torch import load_file

    wa, wb = load_file(a / "model.safetensors"), load_file(b / "model.safetensors")
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
    assert tiny_model(_texts(), spec=SPEC, cache=tmp_path / "a") == a  # second call reuses the cache
