"""`raftune evaluate`: every model of the run answers every test question with retrieved context; scored per answer."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from tqdm import tqdm

from raftune import RaftuneError
from raftune.chat import render_prompt
from raftune.config import RunConfig
from raftune.data.corpus import corpus_chunks
from raftune.evaluate.metrics import cosine, keyword_score, rouge_l, weighted_average
from raftune.evaluate.providers import GGUFProvider, HFProvider
from raftune.evaluate.retrieval import Retriever, load_embedder
from raftune.evaluate.testset import load_testset
from raftune.manifest import Stage, write_jsonl, write_text
from raftune.models import load_tokenizer, resolve_base

METRICS = ["keyword_score", "cosine", "rouge_l", "weighted"]


def models_of_run(config: RunConfig) -> list[dict]:
    """Base, finetuned (merged HF) and each exported GGUF that exists; prompts use each source's chat template."""
    base = resolve_base(config)
    models = [{"name": "base", "kind": "hf", "path": base, "tokenizer": base}]
    merged = config.stage_dir("merge") / "model"
    if (merged / "config.json").is_file():
        models.append({"name": "finetuned-hf", "kind": "hf", "path": str(merged), "tokenizer": str(merged)})
        for gguf_type in config.export.types:
            path = config.stage_dir("export") / f"model-{gguf_type}.gguf"
            if path.is_file():
                models.append({"name": f"finetuned-gguf-{gguf_type}", "kind": "gguf", "path": str(path),
                               "tokenizer": str(merged)})
    return models


def retrieval_report(items, contexts) -> dict:
    """Share of questions whose cited document and page is among the retrieved chunks."""
    hits = [any(c.document == i.cite_document and c.page in i.cite_pages for c in ctx) for i, ctx in zip(items, contexts)]
    return {"questions": len(items), "cited_passage_retrieved": round(sum(hits) / len(hits), 4)}


def run(config: RunConfig, models: list[dict] | None = None):
    cfg = config.evaluate
    items = load_testset(cfg.testset)
    models = models or models_of_run(config)
    stage = Stage(config, "evaluate", {"testset": cfg.testset, "corpus": config.data.corpus,
                                       "models": models, "top_k": cfg.top_k})
    embedder = load_embedder(cfg.embedding_model)
    contexts = Retriever(embedder, corpus_chunks(config.data)).search([i.question for i in items], cfg.top_k)
    rows = []
    for spec in models:
        tokenizer = load_tokenizer(spec["tokenizer"])
        provider = (HFProvider if spec["kind"] == "hf" else GGUFProvider)(spec["name"], spec["path"], cfg.max_new_tokens)
        for item, ctx in tqdm(list(zip(items, contexts)), desc=f"evaluate {spec['name']}", unit="question"):
            prompt = render_prompt(tokenizer, item.question, [c.text for c in ctx])
            answer = provider.generate(prompt)
            rows.append({"model": spec["name"], "test_id": item.test_id, "question_id": item.question_id,
                         "question": item.question, "context_ids": [c.id for c in ctx], "answer": answer.text,
                         "reference": item.reference, "keywords": item.keywords, "new_tokens": answer.new_tokens,
                         "seconds": round(answer.seconds, 3), "tokens_per_s": round(answer.new_tokens / max(answer.seconds, 1e-9), 1),
                         "keyword_score": keyword_score(answer.text, item.keywords),
                         "rouge_l": rouge_l(answer.text, item.reference)})
        provider.close()
    sims = cosine(embedder, [r["answer"] for r in rows], [r["reference"] for r in rows])
    for row, sim in zip(rows, sims):
        row["cosine"] = float(sim)
        row["weighted"] = weighted_average(row)

    table = pd.DataFrame(rows)
    summary = table.groupby("model", sort=False)[METRICS + ["tokens_per_s"]].mean().round(4)
    write_jsonl(stage.dir / "answers.jsonl", rows)
    write_text(stage.dir / "scores.csv", table.drop(columns=["context_ids", "keywords"]).to_csv(index=False))
    write_text(stage.dir / "summary.csv", summary.to_csv())
    stage.outputs = {"answers": len(rows), "summary": summary.to_dict(orient="index"),
                     "retrieval": retrieval_report(items, contexts)}
    stage.finish()
    return summary
