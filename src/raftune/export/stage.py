"""`raftune export`: merged model -> GGUF files via llama.cpp's converter, each read back, checked and gated.

f32/f16/bf16/q8_0 come straight from `convert_hf_to_gguf.py`; K-quants and the other llama.cpp types from an f16
GGUF through `llama_model_quantize`. Every file is written under a temporary name, read back with the `gguf`
reader, then measured by the fidelity report against the HF model. A lossless type whose NMSE is over the gate or
whose tokenisation differs is renamed `*.failed.gguf` and the export fails; a quantised type is compared with the
same type made from the untouched base model, since small models lose more to quantisation than 7B ones.
"""

from __future__ import annotations

import os
from pathlib import Path

from raftune import RaftuneError
from raftune.config import RunConfig
from raftune.data.retrieval import build_retriever
from raftune.export import fidelity
from raftune.export.converter import convert, convert_lora, quantize, source_info
from raftune.export.gguf_check import check_gguf
from raftune.manifest import Stage, make_dir, sha256_file, write_json, write_text
from raftune.models import load_tokenizer, resolve_base
from raftune.train import load_examples

CONVERTER_TYPES = {"f32", "f16", "bf16", "q8_0"}


def _partial(path: Path) -> Path:
    return path.with_name(path.name + ".partial")


def export(model_dir, out_path, gguf_type: str) -> dict:
    """Convert (or quantise) to a temporary name; rename only after the read-back check passed."""
    model_dir, out_path = Path(model_dir), Path(out_path)
    if not (model_dir / "config.json").is_file():
        raise RaftuneError(f"{model_dir}: not a model folder (no config.json)")
    if not any((model_dir / f).is_file() for f in ("tokenizer.json", "tokenizer.model")):
        raise RaftuneError(f"{model_dir}: no tokenizer (tokenizer.json or tokenizer.model); the GGUF needs one")
    make_dir(out_path.parent)
    tmp = _partial(out_path)
    f16_tmp = out_path.with_name(out_path.stem + ".f16-source.partial")
    try:
        if gguf_type in CONVERTER_TYPES:
            convert(model_dir, tmp, gguf_type)
        else:
            convert(model_dir, f16_tmp, "f16")  # llama.cpp quantises from a 16-bit GGUF
            quantize(f16_tmp, tmp, gguf_type)
        facts = check_gguf(tmp, model_dir)
        os.replace(tmp, out_path)
    finally:
        for path in (tmp, f16_tmp):
            if path.exists():
                path.unlink()
    write_usage(out_path, model_dir)
    return {"path": str(out_path), "type": gguf_type, "bytes": out_path.stat().st_size,
            "sha256": sha256_file(out_path), **facts}


def export_lora(adapter_dir, base_dir, out_path) -> dict:
    """The adapter alone as a GGUF LoRA (llama.cpp's --lora), beside the base model's GGUF."""
    out_path = Path(out_path)
    tmp = _partial(out_path)
    try:
        convert_lora(Path(adapter_dir), Path(base_dir), tmp)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"path": str(out_path), "type": "lora-f16", "bytes": out_path.stat().st_size, "sha256": sha256_file(out_path)}


def write_usage(gguf_path: Path, model_dir: Path) -> None:
    """A llama.cpp command line and an Ollama Modelfile with the training chat template and its stop token."""

    tokenizer = load_tokenizer(str(model_dir))
    # Render the template around a placeholder to get its exact text; the runtime adds BOS itself.
    template = tokenizer.apply_chat_template([{"role": "user", "content": "{{ .Prompt }}"}], tokenize=False,
                                             add_generation_prompt=True)
    template = template.removeprefix(tokenizer.bos_token or "")
    name = gguf_path.name
    write_text(gguf_path.with_suffix(".Modelfile"), (
        f"# ollama create raftune -f {gguf_path.with_suffix('.Modelfile').name} && ollama run raftune\n"
        f"FROM ./{name}\nTEMPLATE \"\"\"{template}\"\"\"\nPARAMETER stop \"{tokenizer.eos_token}\"\n"
        "PARAMETER temperature 0\nPARAMETER num_ctx 4096\n"))
    write_text(gguf_path.with_suffix(".llama-cpp.sh"), (
        "#!/bin/sh\n# Chat with this model in llama.cpp, using the chat template embedded in the GGUF (the one it was\n"
        "# trained with); llama-server serves the same as an OpenAI-compatible endpoint on port 8080.\n"
        f"llama-cli -m \"$(dirname \"$0\")/{name}\" --jinja -c 4096 --temp 0 \"$@\"\n"
        f"# llama-server -m \"$(dirname \"$0\")/{name}\" --jinja -c 4096\n"))


def fail(path: Path) -> Path:
    """Keep a GGUF that failed the gate for inspection, under a name no runtime setup would pick up."""
    failed = path.with_name(path.name.removesuffix(".gguf") + ".failed.gguf")
    os.replace(path, failed)
    return failed


def references(config: RunConfig) -> list[tuple[str, list[str], str]] | None:
    """Held-out (question, documents, reference answer) rows for the EOS check, as the model was trained on them;
    none for the docs approach (plain text, no answer turn that ends in EOS)."""

    if config.train.approach == "docs":
        return None
    rows = load_examples(config)["eval"]
    if config.train.approach == "raft":
        refs = [(r["question"], r["documents"], r["cot_answer"]) for r in rows]
    else:
        refs = [(r["question"], [r["context"]], r["answer"]) for r in rows]
    return refs[: config.export.fidelity_prompts] or None


def run(config: RunConfig):
    model_dir = config.stage_dir("merge") / "model"
    if not (model_dir / "config.json").is_file():
        raise RaftuneError(f"no merged model at {model_dir}; run `raftune merge` first")
    cfg = config.export
    stage = Stage(config, "export", {"model": str(model_dir), "converter": source_info()})
    prompts = fidelity.fidelity_prompts(load_tokenizer(str(model_dir)), config.evaluate.testset,
                                        build_retriever(config), config.evaluate.top_k, cfg.fidelity_prompts)
    refs = references(config)
    base_eos = {"base_eos_probability": fidelity.base_eos_probability(resolve_base(config), refs)} if refs else {}
    files, reports, failures = {}, [], []
    for gguf_type in cfg.types:
        print(f"export: {model_dir} -> {gguf_type} with llama.cpp's converter")
        path = stage.dir / f"model-{gguf_type}.gguf"
        files[gguf_type] = export(model_dir, path, gguf_type)
        report = fidelity.compare(model_dir, path, prompts, greedy_tokens=cfg.greedy_tokens, references=refs)
        report.update(base_eos)
        if gguf_type not in fidelity.LOSSLESS and cfg.compare_base:
            base = resolve_base(config)
            base_path = stage.dir / "base" / f"base-{gguf_type}.gguf"
            export(base, base_path, gguf_type)
            report.update(fidelity.against_base(report, fidelity.compare(base, base_path, prompts,
                                                                         greedy_tokens=cfg.greedy_tokens)))
        problems = fidelity.gate(report, cfg.limits())
        report["passed"], report["problems"] = not problems, problems
        write_json(stage.dir / f"fidelity-{gguf_type}.json", report)
        reports.append(report)
        print(f"export: {path.name}: top-1 {report['top1_agreement']:.2%}, NMSE {report['nmse']:.2e}, KL mean "
              f"{report['kl_mean']:.2e}, greedy {report['greedy_agreement']:.0%}"
              + (f", P(EOS) after the reference answers {report['eos_probability']:.2g} (base "
                 f"{report['base_eos_probability']:.2g})" if base_eos else "")
              + (f"; base {gguf_type}: top-1 {report['base_top1_agreement']:.2%}, KL {report['base_kl_mean']:.2e}"
                 if "base_top1_agreement" in report else ""))
        if problems:
            files[gguf_type]["path"] = str(fail(path))
            failures.append(f"{gguf_type}: {'; '.join(problems)}")
    if cfg.lora_adapter:
        files["lora"] = export_lora(config.stage_dir("train") / "adapter", resolve_base(config),
                                    stage.dir / "adapter-f16.gguf")
    write_text(stage.dir / "fidelity.md", fidelity.markdown_table(reports))
    fidelity.plot(reports, stage.dir / "fidelity.png")
    stage.outputs = {"files": files, "fidelity": {r["gguf_type"]: fidelity.summary(r) for r in reports}}
    stage.extra["failed"] = failures  # a failed export is never up to date: a rerun fails again and says why
    stage.finish()
    if failures:
        raise RaftuneError(f"fidelity gate failed ({' | '.join(failures)}); see {stage.dir / 'fidelity.md'}")
    return stage.outputs["files"]


def run_one(model_dir, out_path, gguf_type: str, prompts_fn, limits: dict, greedy_tokens: int = 64) -> dict:
    """`raftune export --model DIR --out FILE --type T`: one file, its fidelity report beside it, gated."""
    out_path = Path(out_path)
    facts = export(model_dir, out_path, gguf_type)
    print(f"export: wrote {out_path} ({facts['bytes'] / 1e6:.1f} MB), read back and checked")
    report = fidelity.compare(model_dir, out_path, prompts_fn(), greedy_tokens=greedy_tokens)
    problems = fidelity.gate(report, limits)
    report["passed"], report["problems"] = not problems, problems
    write_json(out_path.with_suffix(".fidelity.json"), report)
    print(fidelity.markdown_table([report]))
    if problems:
        raise RaftuneError(f"fidelity gate failed for {fail(out_path)}: {'; '.join(problems)}")
    return facts
