"""`raftune evaluate`: every model answers every test question with the same context; every answer is scored.

Outputs (runs/<run>/evaluate/, or --out DIR):
  answers.jsonl       per answer: the exact prompt, the context ids, the answer, tokens, latency, tokens/s
  scores.csv          per answer: every metric on the whole answer, and `final_<metric>` on the final answer
  results.parquet/csv the tidy table (raftune.evaluate.results), also added to the history
  summary.csv         per model: mean of every metric (`final_...`: on the final answer), weighted_q
  ci.csv              per model, part and metric: mean, quality-weighted mean, bootstrap 95 % interval
  retrieval.json      retrieval quality at k = 1, 3, 5, 10
Answers are cached by (model, prompt, parameters) in runs/<run>/cache/answers.jsonl (with --answers: in
OUT/answer_cache.jsonl), outside the stage folder: a rerun, or a run resumed after a kill, regenerates nothing.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from pathlib import Path

import pandas as pd
from tqdm import tqdm

from raftune import RaftuneError
from raftune.answer import final_answer
from raftune.config import RunConfig, check_spec, config_to_dict
from raftune.data.embedders import load_embedder
from raftune.data.generators import ResponseCache
from raftune.data.retrieval import answer_corpus, contexts
from raftune.data.testset import load_testset
from raftune.evaluate.providers import Answer, extractive_baseline, make_provider
from raftune.evaluate.recorded import recorded_answer, recorded_models
from raftune.evaluate.results import config_hash, new_run_id, tidy, write_results
from raftune.evaluate.scoring import bootstrap_ci, score_rows, summarise
from raftune.manifest import Stage, library_versions, strip_credentials, write_json, write_jsonl, write_text
from raftune.models import resolve_base

EXTRACTIVE = {"name": "extractive-baseline", "kind": "extractive"}  # the row evaluate.extractive_baseline adds
# kinds whose answers no model generates here
NOT_GENERATED = {"recorded", "extractive"}
# the columns `raftune demo` prints; every metric is in summary.csv
SHOWN = ["keyword_score", "cosine", "rouge_l", "weighted", "weighted_q", "final_weighted", "quote_grounding",
         "citation", "same_language", "tokens_per_s"]


def models_of_run(config: RunConfig) -> list[dict]:
    """Base, finetuned (merged HF) and each exported GGUF that exists; prompts use each source's chat template."""

    base = resolve_base(config)
    models = [{"name": "base", "kind": "hf", "path": base}]
    merged = config.stage_dir("merge") / "model"
    if (merged / "config.json").is_file():
        models.append({"name": "finetuned-hf", "kind": "hf", "path": str(merged)})
        for gguf_type in config.export.types:
            path = config.stage_dir("export") / f"model-{gguf_type}.gguf"
            if path.is_file():
                models.append({"name": f"finetuned-gguf-{gguf_type}", "kind": "gguf", "path": str(path),
                               "tokenizer": str(merged)})
    return models


def model_specs(config: RunConfig) -> list[dict]:
    cfg = config.evaluate
    specs = models_of_run(config) if cfg.run_models else []
    specs += [check_spec(dict(s), f"evaluate.models[{i}]") for i, s in enumerate(cfg.models)]
    specs += [{"kind": "recorded", "path": p} for p in cfg.recorded_files()]
    if cfg.extractive_baseline:
        specs.append(dict(EXTRACTIVE))
    if not specs:
        raise RaftuneError("evaluate: no models (evaluate.run_models and evaluate.extractive_baseline are false and "
                           "evaluate.models is empty)")
    return specs


def check_models(specs, items) -> None:
    """Every recorded file answers the test set, and each row has a name of its own (a file's names are its models')."""
    names = []
    for spec in specs:
        names += list(recorded_models(spec, items)) if spec["kind"] == "recorded" else [spec["name"]]
    for name in names:
        if names.count(name) > 1:
            hint = (" (evaluate.extractive_baseline computes it: drop the other or set evaluate.extractive_baseline=false)"
                    if name == EXTRACTIVE["name"] else "")
            raise RaftuneError(f"evaluate: two models named '{name}'; each model needs a name of its own{hint}")


def answer_all(config: RunConfig, specs, items, context, cache: ResponseCache) -> list[dict]:
    cfg = config.evaluate
    params = {"max_new_tokens": cfg.max_new_tokens, "decoding": "greedy", "repetition_penalty": 1.0}
    rows = []
    for spec in specs:
        if spec["kind"] == "recorded":
            for name, answers in recorded_models(spec, items).items():
                for item, ctx in zip(items, context):
                    rows.append(_row(name, "recorded", item, ctx, None, recorded_answer(answers[item.key]), False))
            continue
        if spec["kind"] == "extractive":  # the same retrieved passages the models read
            for item, ctx in zip(items, context):
                answer = extractive_baseline(item.question, [c["text"] for c in ctx])
                rows.append(_row(spec["name"], "extractive", item, ctx, None, answer, False))
            continue
        provider = make_provider(spec, cfg, config.quantization or None)
        prompts = [provider.render(item.question, [c["text"] for c in ctx]) for item, ctx in zip(items, context)]
        model_key = json.dumps([provider.identity, params], sort_keys=True)
        keys = [ResponseCache.key(model_key, p) for p in prompts]
        todo = [n for n, key in enumerate(keys) if cache.get(key) is None]
        with tqdm(total=len(keys), initial=len(keys) - len(todo), desc=f"answers {spec['name']}", unit="question") as bar:
            try:
                if todo:
                    for n, answer in provider.generate([prompts[t] for t in todo]):
                        cache.put(keys[todo[n]], dataclasses.asdict(answer))  # on disk before the next one
                        bar.update()
            except RaftuneError as err:
                kept = sum(cache.get(k) is not None for k in keys)
                raise RaftuneError(f"{err}; {kept} of {len(keys)} answers of this model (and all earlier models') "
                                   f"are kept in {cache.path}, a rerun generates only the rest") from None
            finally:
                provider.close()
        for n, (item, ctx) in enumerate(zip(items, context)):
            rows.append(_row(spec["name"], spec["kind"], item, ctx, prompts[n], Answer(**cache.get(keys[n])),
                             n not in todo))
    return rows


def _row(model, kind, item, ctx, prompt, answer: Answer, cached: bool) -> dict:
    seconds = answer.seconds
    return {"model": model, "kind": kind, "test_id": item.test_id, "question_id": item.question_id,
            "question": item.question, "context_ids": [c["id"] for c in ctx], "prompt": prompt,
            "answer": answer.text, "final_answer": final_answer(answer.text), "reference": item.reference,
            "keywords": item.keywords, "new_tokens": answer.new_tokens,
            "seconds": round(seconds, 3) if not math.isnan(seconds) else None, "batch_size": answer.batch_size,
            "tokens_per_s": round(answer.tokens_per_s, 1) if not math.isnan(seconds) else None, "cached": cached,
            # for scoring, not written
            "context": [c["text"] for c in ctx], "cited": item.cited_texts, "weight": item.weight}


def evaluate(config: RunConfig, specs: list[dict], out: Path, history: Path, cache: Path) -> tuple[pd.DataFrame, dict]:
    """Answer, score and write everything into `out`; returns (the shown summary, the manifest outputs)."""
    cfg = config.evaluate
    items = load_testset(cfg.testset)
    check_models(specs, items)  # a bad answers file or a name used twice fails now, not after the models have run
    context, report = contexts(config, items)
    rows = answer_all(config, specs, items, context, ResponseCache(cache))

    scores = score_rows(rows, load_embedder(cfg.embedding_model))
    digest = config_hash(config_to_dict(config))
    when = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    run_id = new_run_id(config.run, digest)
    full = scores[scores.part == "full"].drop(columns="part").reset_index(drop=True)
    final = scores[scores.part == "final"].drop(columns=["part", "weight"]).reset_index(drop=True)
    answers = pd.DataFrame(rows).drop(columns=["context", "cited", "weight"])
    wide = answers[["model", "test_id", "question_id", "question", "answer", "reference", "new_tokens", "seconds",
                    "tokens_per_s"]].merge(full, on=["model", "test_id", "question_id"])
    wide = wide.merge(final.rename(columns=lambda c: c if c in ("model", "test_id", "question_id") else f"final_{c}"),
                      on=["model", "test_id", "question_id"])
    summary = summarise(scores, "full").join(summarise(scores, "final").add_prefix("final_"))
    speed = answers.groupby("model", sort=False)[["tokens_per_s", "seconds"]].mean()
    summary = summary.join(speed).rename(columns={"seconds": "latency_s"})
    summary = summary.join(answers.groupby("model", sort=False)["kind"].first())  # why a speed can be missing
    ci = bootstrap_ci(scores, cfg.bootstrap_resamples)

    write_jsonl(out / "answers.jsonl", answers.to_dict(orient="records"))
    write_text(out / "scores.csv", wide.to_csv(index=False))
    write_text(out / "summary.csv", summary.round(4).to_csv())
    write_text(out / "ci.csv", ci.round(4).to_csv(index=False))
    if report is not None:
        write_json(out / "retrieval.json", report)
    files = write_results(tidy(scores, run_id, config.run, digest, when), out, history)
    shown = summary[SHOWN].round(4)
    outputs = {"run_id": run_id, "config_hash": digest, "answers": len(rows),
               "generated": sum(not r["cached"] for r in rows if r["kind"] not in NOT_GENERATED),
               "models": list(summary.index), "summary": shown.to_dict(orient="index"), "retrieval": report, **files}
    print(f"evaluate: {len(items)} questions x {len(summary)} models -> {out} (run id {run_id})")
    if report is not None:
        print("retrieval: " + ", ".join(f"k={k}: cited passage {v['cited_passage']}, all keywords {v['all_keywords']}"
                                        for k, v in report["k"].items()))
    return shown, outputs


def history_dir(config: RunConfig, default: Path) -> Path:
    return Path(config.evaluate.history) if config.evaluate.history else default


def run(config: RunConfig):
    cfg = config.evaluate
    specs = model_specs(config)
    stage = Stage(config, "evaluate", {"testset": cfg.testset, "corpus": answer_corpus(config), "context": cfg.context,
                                       "models": specs, "top_k": cfg.top_k})
    summary, stage.outputs = evaluate(config, specs, stage.dir, history_dir(config, Path(config.runs_dir) / "history"),
                                      config.cache_dir() / "answers.jsonl")
    stage.finish()
    return summary


def score_file(config: RunConfig, testset: str, answers: str, out: str):
    """`raftune evaluate --testset PATH --answers FILE --out DIR`: score a recorded-answers file alone."""
    out = Path(out)
    config = dataclasses.replace(config, evaluate=dataclasses.replace(config.evaluate, testset=testset))
    started = time.time()
    specs = [{"kind": "recorded", "path": answers}]
    summary, outputs = evaluate(config, specs, out, history_dir(config, out / "history"), out / "answer_cache.jsonl")
    write_json(out / "manifest.json", strip_credentials({"stage": "evaluate", "run": config.run,
                                       "inputs": {"testset": testset, "answers": answers, "corpus": answer_corpus(config)},
                                       "outputs": outputs, "config": config_to_dict(config),
                                       "versions": library_versions(), "seconds": round(time.time() - started, 2),
                                       "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return summary
