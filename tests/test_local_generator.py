"""data.generator=local: questions and reasoning answers per chunk from a GGUF through llama.cpp.

The build's bookkeeping runs on scripted replies (a quote that is not in its chunk, a reply cut off, a non-question,
a quote that differs in whitespace only, a repeated question, an empty answer); one real llama.cpp call on a tiny
GGUF proves the path from the GGUF's own chat template to grammar-held JSON."""

import json
import re

import pytest

from raftune import RaftuneError
from raftune.data import generators
from raftune.data import stage as data_stage
from raftune.data.corpus import corpus_chunks
from raftune.data.generators import make_generator, parse_reply
from raftune.data.raft import split_sentences

from conftest import mini_config


def item(question, quote, answer="Die Antwort.", reasoning="Das steht im Abschnitt."):
    return {"zitat": quote, "frage": question, "begruendung": reasoning, "antwort": answer}


def reply(item):
    return json.dumps(item, ensure_ascii=False)


def first_sentence(chunk: str) -> str:
    return chunk.split(". ")[0] + "."


def scripted(chunk: str, n: int) -> str:
    """The fake model's n-th reply, two per chunk of the mini corpus (six chunks)."""
    first = first_sentence(chunk)
    return [
        reply(item("Was gilt laut Abschnitt A?", first)),
        reply(item("Und wie lange hab ich?", "Die Frist beträgt 99 Tage.")),  # not in the chunk
        '{"zitat": "' + first + '", "frage": "Wie',  # cut off by the token limit
        '{"zitat": "' + first + '", "frage": "Wie l',
        reply(item("Das ist keine Frage.", first)),
        reply(item("Was gilt hier?", "  " + first.replace(" ", "\n  ", 1))),  # differs in whitespace only
        reply(item("was gilt laut abschnitt a?", first)),  # the first chunk's question again
        reply(item("Was ist mit der Antwort?", first, answer="  ")),
        reply(item("Was regelt Abschnitt E?", first)), reply(item("Und bei E?", first)),
        reply(item("Was regelt Abschnitt F?", first)), reply(item("Und bei F?", first)),
    ][n]


@pytest.fixture
def fake_model(monkeypatch, tmp_path):
    """llama_complete replaced by the script; records each request and schema."""
    requests = []

    def fake_llama_complete(gguf, max_tokens, threads, batch_size):
        def complete(asked):
            replies = []
            for request, schema in asked:
                requests.append((request, schema))
                chunk = request.split("Abschnitt:\n", 1)[1].split("\n\nSchreibe", 1)[0]
                replies.append(scripted(chunk, len(requests) - 1))
            return replies
        return complete

    monkeypatch.setattr(generators, "llama_complete", fake_llama_complete)
    gguf = tmp_path / "model.gguf"
    gguf.write_bytes(b"GGUF")
    return gguf, requests


def local_config(tmp_path, gguf, *extra):
    return mini_config(tmp_path, "data.generator=local", "data.qac=null", f"data.generator_model={gguf}",
                       "data.questions_per_chunk=2", "data.rows_per_question=1", *extra)


def test_local_build_keeps_rows_quoting_their_chunk_and_counts_every_drop(fake_model, tmp_path):
    gguf, requests = fake_model
    config = local_config(tmp_path, gguf)
    chunks = corpus_chunks(config.data)
    assert len(chunks) == 6
    data_stage.run(config)
    manifest = json.loads((config.stage_dir("data") / "manifest.json").read_text())["outputs"]
    assert manifest["generated"] == {
        "rows_written": 12, "kept": 6,
        "dropped": {"unparsable": 2, "not_a_question": 1, "no_answer": 1, "quote_not_in_chunk": 1, "duplicate": 1},
        "quotes_repaired": 1,
            # "Und bei E?" has too few words to tell its language
            "languages": {"question": {"de": 4, "none": 2}, "answer": {"de": 6}}}
    assert manifest["questions"] == 6 and manifest["generator_calls"] == 12
    assert manifest["train_rows"] + manifest["eval_rows"] == 6

    # each chunk asked for two questions, formal about its first sentence then colloquial about its second, in the
    # chunk's language, each free to quote any of its sentences
    (formal, schema), (colloquial, second) = requests[:2]
    sentences = split_sentences(chunks[0].text)
    assert "Sie-Form" in formal and "Du-Form" in colloquial and "auf Deutsch" in formal
    assert chunks[0].text in formal and f":\n{sentences[0]}\n\n" in formal and f":\n{sentences[1]}\n\n" in colloquial
    assert schema["properties"]["zitat"]["enum"] == sentences == second["properties"]["zitat"]["enum"]

    rows = [json.loads(line) for split in ("train", "eval")
            for line in (config.stage_dir("data") / f"hf_{split}.jsonl").read_text().splitlines()]
    repaired = next(r for r in rows if r["question"] == "Was gilt hier?")
    exact = first_sentence(chunks[2].text)
    assert repaired["cot_answer"] == f"##begin_quote##{exact}##end_quote##\nDas steht im Abschnitt.\n<ANSWER>: Die Antwort."
    assert repaired["oracle_context"] == chunks[2].text and repaired["answer"] == "Die Antwort."

    data_stage.run(config)  # every reply cached: no request, the same rows and counts
    again = json.loads((config.stage_dir("data") / "manifest.json").read_text())["outputs"]
    assert again["generator_calls"] == 0 and again["generated"] == manifest["generated"] and len(requests) == 12


def test_a_build_that_keeps_no_question_ends_with_one_line_and_writes_nothing(fake_model, tmp_path, monkeypatch):
    gguf, _ = fake_model
    monkeypatch.setattr(generators, "llama_complete",
                        lambda gguf, max_tokens, threads, batch_size: lambda asked: ["{"] * len(asked))
    config = local_config(tmp_path, gguf)
    with pytest.raises(RaftuneError, match=r"^data.generator=local: no question kept from 6 chunks \(dropped "
                                           r"\{'unparsable': 12, 'not_a_question': 0, "):
        data_stage.run(config)
    assert not config.stage_dir("data").exists()


def test_local_generator_settings_are_checked_before_any_model_loads(fake_model, tmp_path):
    gguf, requests = fake_model
    with pytest.raises(RaftuneError, match=r"data.generator=local writes its questions from the corpus, data.qac=.*qac.json "
                                           r"would replace them: set data.qac: null"):
        make_generator(mini_config(tmp_path, "data.generator=local", f"data.generator_model={gguf}").data, tmp_path / "c")
    with pytest.raises(RaftuneError, match="data.generator_model=nowhere.gguf: not a GGUF file nor a packaged model "
                                           r"\(qwen2.5-coder-1.5b, qwen2.5-coder-0.5b\)"):
        make_generator(local_config(tmp_path, "nowhere.gguf").data, tmp_path / "c")
    with pytest.raises(RaftuneError, match="data.question_styles=.*expected a list, each item one of formal, colloquial"):
        local_config(tmp_path, gguf, "data.question_styles=[formal, chatty]")
    assert requests == []


def test_a_reply_of_the_wrong_shape_is_unparsable():
    good = item("Wann?", "Text")
    assert parse_reply(reply(good)) == good
    assert parse_reply(reply({**good, "frage": 3})) is None
    assert parse_reply(reply({k: v for k, v in good.items() if k != "antwort"})) is None
    assert parse_reply('{"zitat": "Text", "fr') is None and parse_reply("[]") is None


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory):
    """The tiny test model (two layers, Mistral's template), exported to an f16 GGUF."""
    from raftune.data.corpus import load_corpus
    from raftune.export.stage import export
    from raftune.tiny import TinySpec, tiny_model

    from conftest import MINI

    spec = TinySpec(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=2,
                    num_key_value_heads=1, pretrain_steps=5)
    out = tmp_path_factory.mktemp("tiny-gguf")
    folder = tiny_model([c.text for c in load_corpus(MINI / "corpus")], spec=spec, cache=out)
    export(folder, out / "tiny-f16.gguf", "f16")
    return out / "tiny-f16.gguf"


def test_llama_cpp_answers_each_chunk_with_json_of_the_asked_shape(tiny_gguf, tmp_path):
    config = local_config(tmp_path, tiny_gguf, "data.questions_per_chunk=1", "data.generator_max_tokens=400")
    generator = make_generator(config.data, tmp_path / "cache.jsonl")
    chunks = corpus_chunks(config.data)[:2]
    for chunk in chunks:
        generator.questions(chunk, 1)
    assert generator.calls == 2 and generator.report()["rows_written"] == 2
    for chunk, response in zip(chunks, generator.cache.entries.values()):
        # the grammar holds even the tiny model to the schema: JSON that starts with one of the chunk's sentences
        # (the tiny model may run its own words on to the token limit)
        quote = re.match(r'\{ ?"zitat" ?: ?("(?:[^"\\]|\\.)*")', response)
        assert quote and json.loads(quote.group(1)) in split_sentences(chunk.text)


def test_requests_decoded_together_get_the_replies_llama_cpp_python_gives_one_at_a_time(tiny_gguf, tmp_path):
    """raftune's batched decoding checks each sequence's greedy token against its grammar and masks the vocabulary
    only when the grammar rejects it; llama-cpp-python masks it on every step, one request at a time. The same text
    from the tiny f16 model (a quantised model's batched products can round a near-tie the other way)."""
    from llama_cpp import LlamaGrammar

    from raftune.chat import render_request
    from raftune.gguf_file import gguf_chat_template
    from raftune.llama_runtime import gguf_tokens, open_gguf

    config = local_config(tmp_path, tiny_gguf, "data.questions_per_chunk=1", "data.generator_max_tokens=48",
                          "data.generator_batch_size=3")
    generator = make_generator(config.data, tmp_path / "cache.jsonl")
    chunks = corpus_chunks(config.data)[:3]
    generator.prefetch(chunks, 1)
    assert generator.calls == 3 and len(generator.cache.entries) == 3

    llm, template = open_gguf(tiny_gguf), gguf_chat_template(tiny_gguf)
    for chunk in chunks:
        [(_, request, schema)] = generator.requests(chunk, 1)
        grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        alone = llm.create_completion(gguf_tokens(llm, render_request(template, request)), max_tokens=48,
                                      temperature=0.0, top_k=1, repeat_penalty=1.0, grammar=grammar)
        assert generator.cache.get(generator.key(request, schema)) == alone["choices"][0]["text"]
