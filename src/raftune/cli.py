"""The `raftune` command line: one subcommand per pipeline stage, plus `demo` for all of them."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from raftune import RaftuneError
from raftune.config import MERGE_METHODS, MergeConfig
from raftune.manifest import strip_credentials

DEFAULT_CONFIG = "configs/demo-gemma.yaml"  # Gemma 3 270M; configs/demo-tiny.yaml: the tiny model of the tests
# Commands whose options can name every input they read (any one group here): so given, and without --config, they
# run on raftune's defaults, in any folder. The others read a recipe, by default DEFAULT_CONFIG (the repository's).
SELF_CONTAINED = {"export": [("adapter",), ("model", "prompts")], "fidelity": [("prompts",)], "plots": [("results",)]}

STAGES = {
    "train": "QLoRA finetuning: train.approach docs|qac (transformers Trainer) or raft (trl SFTTrainer) "
             "(runs/<run>/train)",
    "merge": "fold the LoRA adapter into the full-precision base (runs/<run>/merge), or merge one --adapter",
    "export": "convert the merged model to GGUF with llama.cpp's converter, check and gate each file by its "
              "fidelity report (runs/<run>/export), or export one --model",
    "evaluate": "answer the test set with every model of the run and score it (runs/<run>/evaluate)",
    "plots": "draw the evaluation figures: models x metrics heatmaps, bars with bootstrap intervals, box plots of runs "
             "over time (PNG + SVG, runs/<run>/plots), or those of any --results folder",
}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config",
                        help=f"YAML recipe (default: {DEFAULT_CONFIG}, unless the command's options name all it reads); "
                             "each file starts with the command that runs it")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="override a recipe value by its dotted path, e.g. sft.max_steps=10 run=quick")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="raftune",
        description="RAFT-style data, QLoRA finetuning, merge, GGUF export and evaluation, from a folder of documents. "
                    "Artifacts go to runs/<run>/<stage>/, each with a manifest.json.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    demo = sub.add_parser("demo", help="run every stage on the embedded demo corpus and print the results table",
                          description="Run data -> train -> merge -> export -> evaluate -> plots on one recipe "
                                      "(by default Gemma 3 270M on the embedded corpus, configs/demo-gemma.yaml; the tiny "
                                      "model: --config configs/demo-tiny.yaml; SmolLM2-135M-Instruct: --config "
                                      "configs/demo.yaml) and print one row per model.")
    demo.set_defaults(func=_demo)
    data = sub.add_parser("data", help="build, inspect or clean training data",
                          description="Build RAFT rows from documents, inspect any data file, or clean RAFT rows.")
    data_sub = data.add_subparsers(dest="data_command", required=True, metavar="ACTION")
    build = data_sub.add_parser(
        "build", help="RAFT rows from the corpus and QAC triplets, or the datasets data.raft/paragraphs/qac name "
                      "(runs/<run>/data)",
        description="Build RAFT rows (oracle + distractors, quoted chain-of-thought answers) into runs/<run>/data.")
    _add_config_args(build)
    build.set_defaults(func=_data_build)
    inspect = data_sub.add_parser(
        "inspect", help="shape, row count, columns, oracle share, languages, token lengths of a data file",
        description="Load a data file (JSON, JSONL, Arrow file, Parquet or save_to_disk folder) in any seed shape or "
                    "any shape raftune writes, and describe it.")
    inspect.add_argument("path", help="the data file or folder")
    inspect.add_argument("--json", action="store_true", help="print one JSON object instead of text")
    inspect.add_argument("--tokenizer", help="tokenizer folder or hub id for token lengths (default: none, no lengths)")
    inspect.add_argument("--plot", help="with --tokenizer: write a histogram of prompt and completion tokens here")
    inspect.set_defaults(func=_inspect)
    clean = data_sub.add_parser(
        "clean", help="check every RAFT row and write the kept rows and a report",
        description="Reject RAFT rows that are not questions, quote text not in the context, lack <ANSWER>:, ...; "
                    "write clean.jsonl, report.json and report.md to OUT.")
    clean.add_argument("path", help="RAFT rows (JSON, JSONL, Arrow file, Parquet or save_to_disk folder)")
    clean.add_argument("--out", required=True, help="output folder")
    clean.add_argument("--repair", action="store_true",
                       help="re-quote spans that are in the context up to whitespace and quote marks, instead of rejecting")
    clean.add_argument("--skip-bad", action="store_true",
                       help="skip unreadable rows (missing field, unparsable context) and count them, instead of failing")
    clean.add_argument("--min-oracle-chars", type=int, default=40, help="shortest oracle document kept (default 40)")
    clean.add_argument("--tokenizer", help="tokenizer folder or hub id for the token budget check")
    clean.add_argument("--max-tokens", type=int, help="token budget of question + documents + answer")
    clean.set_defaults(func=_clean)
    stage = sub.add_parser("train", help=STAGES["train"], description=STAGES["train"])
    stage.add_argument("--resume", action="store_true",
                       help="continue from the newest complete checkpoint of the unfinished run "
                            "(runs/<run>/train.partial/checkpoints), else of the finished one "
                            "(runs/<run>/train/checkpoints), after a crash or kill; needs sft.save_strategy=steps")
    stage.set_defaults(func=_train)
    stage = sub.add_parser("merge", help=STAGES["merge"], description=STAGES["merge"])
    stage.add_argument("--adapter", help="merge this adapter folder alone, instead of the run's (needs --out)")
    stage.add_argument("--out", help="with --adapter: the merged model folder to write")
    stage.add_argument("--method", choices=MERGE_METHODS,
                       help=f"dequantized: into the NF4 base the adapter was trained against; pristine: into the "
                            f"original full-precision base (default: the recipe's merge.method, else {MergeConfig.method})")
    stage.add_argument("--base", help="with --adapter: the full-precision base (default: the adapter's own)")
    stage.add_argument("--unsafe-4bit", action="store_true",
                       help="merge inside the 4-bit model (rounds the weights again; only to reproduce that failure)")
    stage.set_defaults(func=_merge)
    stage = sub.add_parser("export", help=STAGES["export"], description=STAGES["export"])
    stage.add_argument("--model", help="export this HF model folder alone, instead of the run's (needs --out)")
    stage.add_argument("--out", help="with --model or --adapter: the .gguf file to write")
    stage.add_argument("--type",
                       help="with --model: f32, f16, bf16, q8_0 (converter) or q4_k_m, q5_k_m, q6_k, ... "
                            "(llama.cpp quantisation) (default f16)")
    stage.add_argument("--adapter", help="write this PEFT adapter as a GGUF LoRA (with --base-model)")
    stage.add_argument("--base-model", help="with --adapter: the base model folder the adapter belongs to")
    stage.add_argument("--prompts", help='with --model: JSONL of {"question", "documents"} for the fidelity report '
                                         "(default: the recipe's test set with retrieved context)")
    stage.set_defaults(func=_export)
    stage = sub.add_parser("evaluate", help=STAGES["evaluate"], description=STAGES["evaluate"])
    stage.add_argument("--testset", help="test set: the seed's evaluation JSON or RAFT rows (default: "
                                         "evaluate.testset of the recipe)")
    stage.add_argument("--answers", help="score this recorded-answers JSONL alone ({model, test_id, "
                                         "question_id, answer} per line), no model is run; needs --out")
    stage.add_argument("--out", help="with --answers: the output folder")
    stage.add_argument("--retrieval-report", action="store_true",
                       help="measure every retriever (dense embedders, BM25, hybrid) on the test set: "
                            "hit@1/3/5 of the cited passage, side by side; no model is run")
    stage.set_defaults(func=_evaluate)
    stage = sub.add_parser("plots", help=STAGES["plots"], description=STAGES["plots"])
    stage.add_argument("--results", help="a folder holding results.parquet (default: runs/<run>/evaluate)")
    stage.add_argument("--out", help="with --results: where the figures go (default: RESULTS/plots)")
    stage.set_defaults(func=_plots)
    for name, text in (("serve", "answer from the documents over an OpenAI-compatible API and a web page"),
                       ("chat", "answer from the documents in the terminal, one question a line")):
        tool = sub.add_parser(name, help=text, description=(
            text + ": retrieve the top_k passages, render the prompt the model was trained and evaluated with, "
            "generate with the GGUF (greedy), show the answer with its sources."))
        tool.add_argument("--gguf", help="the GGUF to answer with (default: the run's best GGUF that passed its "
                                         "fidelity report)")
        tool.add_argument("--tokenizer", help="HF folder whose chat template renders the prompts (default: the "
                                              "run's merged model)")
        tool.add_argument("--allow-failed", action="store_true",
                          help="answer with a GGUF even though its fidelity report failed")
        if name == "serve":
            tool.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
            tool.add_argument("--port", type=int, default=8000, help="port (default 8000)")
            tool.add_argument("--queue", type=int, default=4,
                              help="requests that may wait while one is answered; more get HTTP 503 (default 4)")
        tool.set_defaults(func=_assistant)
    fid = sub.add_parser(
        "fidelity", help="compare a GGUF with its HF model: tokenisation, logits (NMSE, KL, top-1), greedy text",
        description="Run the fidelity report of a GGUF against the HF folder it was made from, on the recipe's "
                    "test-set prompts (or --prompts), and write it as JSON.")
    fid.add_argument("--hf", required=True, help="the HF model folder (reference)")
    fid.add_argument("--gguf", required=True, help="the GGUF file to check")
    fid.add_argument("--prompts", help='JSONL of {"question", "documents"} (default: the test set with retrieved context)')
    fid.add_argument("--references", help='JSONL of RAFT rows {"question", "documents", "cot_answer"} for the EOS '
                     'check, e.g. runs/<run>/data/hf_eval.jsonl (default: no EOS check)')
    fid.add_argument("--mode", default="template", choices=["template", "raw", "double-bos", "text-control"],
                     help="how llama.cpp is prompted: template (right), or one of the seed's mistakes on purpose")
    fid.add_argument("--json", required=True, help="where to write the JSON report")
    fid.set_defaults(func=_fidelity)
    for name in ("demo", "train", "merge", "export", "evaluate", "plots", "serve", "chat", "fidelity"):
        _add_config_args(sub.choices[name])  # every command that reads a recipe (data build adds its own)
    demo.add_argument("--force", action="store_true",
                      help="run every stage, also those that are up to date (otherwise skipped, one line each)")
    for command in (build, *(sub.choices[name] for name in ("train", "merge", "export", "evaluate", "plots"))):
        command.add_argument("--force", action="store_true",
                             help="run the stage even when it is up to date (the config values it reads, the files "
                                  "they name, the earlier stages' outputs and raftune's code are those of its finished "
                                  "run), which is otherwise skipped with one line")
    return parser


def _recipe(args) -> str | None:
    """The recipe a command reads: --config; none (raftune's defaults) when its options name every input it reads
    (SELF_CONTAINED); else the default recipe, which is relative to the current folder."""
    if args.config:
        return args.config
    if any(all(getattr(args, option) for option in group) for group in SELF_CONTAINED.get(args.command, ())):
        return None
    if not Path(DEFAULT_CONFIG).is_file():
        given = " or ".join(" + ".join(f"--{o.replace('_', '-')}" for o in g) for g in SELF_CONTAINED.get(args.command, ()))
        raise RaftuneError(f"no --config given, and the default recipe {DEFAULT_CONFIG} is not in {Path.cwd()}: run in "
                           f"the repository or pass --config RECIPE" + (f" (or {given})" if given else ""))
    return DEFAULT_CONFIG


def _config(args):
    from raftune.config import load_config

    return load_config(_recipe(args), args.overrides)


def _demo(args):
    from raftune.pipeline import checked_config, run_all

    run_all(checked_config(_recipe(args), args.overrides), force=args.force)


def _skip(config, name: str, args) -> bool:
    from raftune.manifest import skip

    return skip(config, name, args.force)


def _data_build(args):
    from raftune.data.stage import run

    config = _config(args)
    if not _skip(config, "data", args):
        run(config)


def _plots(args):
    from raftune.plots import run

    _only_with(args, "plots", ("results",), ("out",))
    config = _config(args)
    if args.results or not _skip(config, "plots", args):
        run(config, args.results, args.out)


def _train(args):
    from raftune.train import run

    config = _config(args)
    if args.resume or not _skip(config, "train", args):  # --resume continues an unfinished run: it never skips
        run(config, resume=args.resume)


def _only_with(args, command: str, anchors: tuple[str, ...], flags: tuple[str, ...]) -> None:
    """A flag that means something only beside another stops the command when given alone, rather than being
    silently ignored while the recipe's own run is done (and its outputs replaced)."""
    if any(getattr(args, anchor) for anchor in anchors):
        return
    for flag in flags:
        if getattr(args, flag) not in (None, False):
            needed = " or ".join(f"--{anchor.replace('_', '-')}" for anchor in anchors)
            raise RaftuneError(f"{command} --{flag.replace('_', '-')} applies only with {needed}")


def _merge(args):
    from raftune.merge import describe, merge, run

    _only_with(args, "merge", ("adapter",), ("out", "base", "unsafe_4bit"))
    if not args.adapter:
        config = _config(args)
        config.merge.method = args.method or config.merge.method
        if not _skip(config, "merge", args):
            run(config)
        return
    if not args.out:
        raise RaftuneError("merge --adapter needs --out DIR")
    report = merge(args.adapter, args.out, args.method or MergeConfig.method, unsafe_4bit=args.unsafe_4bit,
                   base=args.base)
    print(f"merge ({report['method']}): {args.out} ({describe(report)}); per layer: {args.out}/merge_report.json")


def _export(args):
    from raftune.export import stage

    _only_with(args, "export", ("model", "adapter"), ("out", "type", "prompts", "base_model"))
    config = _config(args)
    if not (args.model or args.adapter):
        if not _skip(config, "export", args):
            stage.run(config)
        return
    if not args.out:
        raise RaftuneError("export --model/--adapter needs --out FILE.gguf")
    if args.adapter:
        if not args.base_model:
            raise RaftuneError("export --adapter needs --base-model DIR")
        facts = stage.export_lora(args.adapter, args.base_model, args.out)
        print(f"export: wrote GGUF LoRA {facts['path']} ({facts['bytes'] / 1e6:.1f} MB)")
        return
    stage.run_one(args.model, args.out, (args.type or "f16").lower(), lambda: _fidelity_prompts(config, args.model, args.prompts),
                  config.export.limits(), config.export.greedy_tokens)


def _evaluate(args):
    from raftune.evaluate import stage

    _only_with(args, "evaluate", ("answers",), ("out",))
    config = _config(args)
    if args.testset:
        config.evaluate.testset = args.testset
    if args.retrieval_report:
        from raftune.data.retrieval import run_comparison

        print(run_comparison(config), end="")
        return
    if args.answers:
        if not args.out:
            raise RaftuneError("evaluate --answers needs --out DIR (where the scores go)")
        summary = stage.score_file(config, config.evaluate.testset, args.answers, args.out)
    elif _skip(config, "evaluate", args):
        return
    else:
        summary = stage.run(config)
    print(summary.to_string())


def _fidelity_prompts(config, hf_dir, prompts_file):
    from raftune.export import fidelity

    if prompts_file:
        return fidelity.load_prompts_file(prompts_file)
    from raftune.data.retrieval import build_retriever
    from raftune.models import load_tokenizer

    return fidelity.fidelity_prompts(load_tokenizer(str(hf_dir)), config.evaluate.testset, build_retriever(config),
                                     config.evaluate.top_k, config.export.fidelity_prompts)


def _fidelity(args):
    from raftune.export import fidelity
    from raftune.manifest import write_json

    config = _config(args)
    references = fidelity.load_references_file(args.references) if args.references else None
    report = fidelity.compare(args.hf, args.gguf, _fidelity_prompts(config, args.hf, args.prompts), mode=args.mode,
                              greedy_tokens=config.export.greedy_tokens, references=references)
    problems = fidelity.gate(report, config.export.limits())
    report["passed"], report["problems"] = not problems, problems
    write_json(args.json, report)
    print(fidelity.markdown_table([report]), end="")
    if problems:
        raise RaftuneError(f"{args.gguf}: fidelity gate failed: {'; '.join(problems)} (report: {args.json})")


def _assistant(args):
    from raftune.serve.assistant import Assistant, QuestionError, serving_threads

    threads = serving_threads() if args.command == "serve" else None  # chat: nothing else needs the cores
    assistant = Assistant(_config(args), args.gguf, args.tokenizer, args.allow_failed, threads)
    if args.command == "serve":
        from raftune.serve.app import serve

        serve(assistant, args.host, args.port, args.queue)
        return
    print(f"chat: {assistant.gguf}; one question a line, Ctrl-D ends", file=sys.stderr)
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            result = assistant.answer(line.rstrip("\n"))
        except QuestionError as err:
            print(f"raftune: {strip_credentials(str(err))}", flush=True)
            continue
        print(result["answer"])
        print(f"=> {result['final_answer']}")
        for n, source in enumerate(result["sources"], 1):
            print(f"  [{n}] {source['document']}, page {source['page']} (score {source['score']:.2f}): "
                  f"{source['text'][:160]}")
        print(flush=True)


def _tokenizer(args):
    if not args.tokenizer:
        return None
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(args.tokenizer)
    except Exception as err:  # noqa: BLE001 - transformers raises OSError, ValueError, HFValidationError, ...
        raise RaftuneError(f"--tokenizer {args.tokenizer}: not a tokenizer folder or hub id that loads "
                           f"({type(err).__name__}: {str(err).splitlines()[0][:200] if str(err) else ''})") from None


def _inspect(args):
    import json

    from raftune.data.inspect import format_report, inspect

    report = inspect(args.path, _tokenizer(args), args.plot)
    print(json.dumps(report, ensure_ascii=False) if args.json else format_report(report))


def _clean(args):
    from raftune.data.clean import clean

    report = clean(args.path, args.out, repair=args.repair, skip_bad=args.skip_bad,
                   min_oracle_chars=args.min_oracle_chars, tokenizer=_tokenizer(args), max_tokens=args.max_tokens)
    print(f"{report['rows_read']} rows read, {report['kept']} kept, rejected {report['rejected']}; "
          f"report: {args.out}/report.md")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RaftuneError as err:  # values of a recipe may be URLs with user:password@ in them
        print(f"raftune: error: {strip_credentials(str(err))}", file=sys.stderr)
        return 2
    return 0
