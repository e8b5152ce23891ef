"""The `raftune` command line: one subcommand per pipeline stage, plus `demo` for all of them."""

from __future__ import annotations

import argparse
import sys

from raftune import RaftuneError

DEFAULT_CONFIG = "configs/demo-tiny.yaml"

STAGES = {
    "data": "build RAFT rows from the corpus and QAC triplets (runs/<run>/data)",
    "train": "QLoRA supervised finetuning with trl's SFTTrainer (runs/<run>/train)",
    "merge": "fold the LoRA adapter into the full-precision base (runs/<run>/merge)",
    "export": "convert the merged model to GGUF with llama.cpp's converter (runs/<run>/export)",
    "evaluate": "answer the test set with every model of the run and score it (runs/<run>/evaluate)",
    "plots": "draw the models x metrics heatmap (runs/<run>/plots)",
}


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help=f"YAML recipe (default: {DEFAULT_CONFIG}); each file starts with the command that runs it")
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
                                      "(by default the tiny Mistral on the embedded corpus) and print one row per model.")
    _add_config_args(demo)
    for name, text in STAGES.items():
        _add_config_args(sub.add_parser(name, help=text, description=text))
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from raftune.config import load_config

        config = load_config(args.config, args.overrides)
        if args.command == "demo":
            from raftune.pipeline import run_all

            run_all(config)
        else:
            from raftune.pipeline import STAGES as RUNNERS

            dict(RUNNERS)[args.command](config)
    except RaftuneError as err:
        print(f"raftune: error: {err}", file=sys.stderr)
        return 2
    return 0
