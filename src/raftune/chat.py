"""The one place where prompts are rendered.

Training, Hugging Face generation, llama.cpp generation and the fidelity report all call `render_prompt` /
`render_example`, which go through the tokenizer's own chat template (saved with the adapter, the merged model
and the GGUF). The seed project built its test prompt by hand with different spacing and sent llama.cpp a prompt
without the context; one renderer makes that class of mismatch impossible.
"""

from __future__ import annotations

from raftune.answer import ANSWER_MARKER, BEGIN_QUOTE, END_QUOTE

INSTRUCTION = (
    "Beantworte die Frage nur mit Hilfe des Kontexts. Zitiere die entscheidenden Stellen zwischen "
    f"{BEGIN_QUOTE} und {END_QUOTE} und schließe mit {ANSWER_MARKER} und der kurzen Antwort."
)

# The Mistral-instruct (v0.3) shape: `<s>[INST] user[/INST] assistant</s>`. Used by the tiny model; real
# models bring their own template, which `render_prompt` uses just the same.
MISTRAL_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% if message['role'] == 'user' %}{{ '[INST] ' + message['content'] + '[/INST]' }}"
    "{% elif message['role'] == 'assistant' %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)

# Gemma's turn format, for the Gemma 3 pretrained base, which ships without a template. The answer ends with
# `<end_of_turn>`, which that base's tokenizer is given as its EOS.
GEMMA_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{% set role = 'model' if message['role'] == 'assistant' else message['role'] %}"
    "{{ '<start_of_turn>' + role + '\\n' + message['content'] | trim + '<end_of_turn>\\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<start_of_turn>model\\n' }}{% endif %}"
)


def user_message(question: str, documents: list[str]) -> str:
    """The user turn: instruction, the context documents, the question (the seed's layout)."""
    context = "\n".join(f"<DOCUMENT>{doc}</DOCUMENT>" for doc in documents)
    return f"{INSTRUCTION}\n\nContext:\n{context}\n\nQuestion: {question}"


def messages(question: str, documents: list[str], answer: str | None = None) -> list[dict]:
    turns = [{"role": "user", "content": user_message(question, documents)}]
    if answer is not None:
        turns.append({"role": "assistant", "content": answer})
    return turns


def render_prompt(tokenizer, question: str, documents: list[str]) -> str:
    """The text a model is given at inference: everything up to where the answer starts, BOS included."""
    return tokenizer.apply_chat_template(messages(question, documents), tokenize=False, add_generation_prompt=True)


def render_example(tokenizer, question: str, documents: list[str], answer: str) -> tuple[str, str]:
    """(prompt, completion) for training: prompt is exactly `render_prompt`'s text, completion the rest (EOS included)."""
    prompt = render_prompt(tokenizer, question, documents)
    full = tokenizer.apply_chat_template(messages(question, documents, answer), tokenize=False)
    if not full.startswith(prompt):
        raise ValueError("the chat template renders the prompt differently with and without the answer; "
                         "prompt/completion masking would be wrong")
    return prompt, full[len(prompt):]


def render_request(tokenizer, content: str) -> str:
    """A data generator's request: one user turn, rendered as `render_prompt` renders a question, BOS included."""
    return tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False, add_generation_prompt=True)


class GGUFChatTemplate:
    """The chat template a GGUF carries (`tokenizer.chat_template`), with its BOS and EOS texts, for a GGUF that comes
    without an HF folder: `apply_chat_template` renders it to text (llama.cpp tokenizes) with transformers' own Jinja
    renderer, as a tokenizer's."""

    def __init__(self, template: str, bos_token: str, eos_token: str):
        self.chat_template, self.bos_token, self.eos_token = template, bos_token, eos_token

    def apply_chat_template(self, conversation: list[dict], tokenize: bool = False, add_generation_prompt: bool = False):
        from transformers.utils.chat_template_utils import render_jinja_template

        rendered, _ = render_jinja_template([conversation], chat_template=self.chat_template,
                                            add_generation_prompt=add_generation_prompt, bos_token=self.bos_token,
                                            eos_token=self.eos_token)
        return rendered[0]


def encode(tokenizer, text: str) -> list[int]:
    """Token ids of rendered text. The template already wrote BOS, so the tokenizer must not add another."""
    return tokenizer(text, add_special_tokens=False)["input_ids"]
