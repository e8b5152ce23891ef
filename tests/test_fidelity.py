"""The fidelity report: passes the pipeline's own GGUFs, and catches each of the seed's failure modes on purpose."""

import json

import pytest
import torch

from raftune import RaftuneError, cli
from raftune.data.retrieval import build_retriever
from raftune.export import failure_modes, fidelity
from raftune.export.stage import export, export_lora
from raftune.merge import merge
from raftune.models import load_model, load_tokenizer

from conftest import mini_config

REPORT_KEYS = {"gguf_type", "tokenization_match", "top1_agreement", "nmse", "kl_mean", "kl_p99", "greedy_agreement"}


@pytest.fixture(scope="module")
def setup(mini_run):
    config, _ = mini_run
    hf = config.stage_dir("merge") / "model"
    prompts = fidelity.fidelity_prompts(load_tokenizer(str(hf)), config.evaluate.testset, build_retriever(config),
                                        config.evaluate.top_k)
    return config, hf, config.stage_dir("export") / "model-f16.gguf", prompts


def test_export_writes_a_passing_report_per_type(setup):
    config, _, _, _ = setup
    export_dir = config.stage_dir("export")
    f16 = json.loads((export_dir / "fidelity-f16.json").read_text())
    assert REPORT_KEYS <= set(f16) and f16["gguf_type"] == "f16" and f16["passed"]
    assert f16["tokenization_match"] and f16["nmse"] <= 1e-4 and f16["top1_agreement"] >= 0.99
    # 2 layers' attn_q and attn_k in llama.cpp's row order, up to f16 rounding (and q8_0's)
    assert f16["qk_tensors"] == 4 and f16["qk_layout_as_expected"] and f16["qk_error"] < 1e-3 < 1 < f16["qk_error_other_layout"]
    q8 = json.loads((export_dir / "fidelity-q8_0.json").read_text())
    assert q8["gguf_type"] == "q8_0" and "base_top1_agreement" in q8 and "within_base_tolerance" in q8
    assert q8["qk_layout_as_expected"] and q8["qk_error"] < 0.02
    assert (export_dir / "base" / "base-q8_0.gguf").is_file()  # the untouched base, same type, same prompts
    assert "| f16 |" in (export_dir / "fidelity.md").read_text() and (export_dir / "fidelity.png").is_file()
    modelfile = (export_dir / "model-f16.Modelfile").read_text()
    assert 'TEMPLATE """[INST] {{ .Prompt }}[/INST]"""' in modelfile and 'PARAMETER stop "</s>"' in modelfile
    assert "--jinja" in (export_dir / "model-f16.llama-cpp.sh").read_text()


@pytest.mark.parametrize("mode,problem", [("raw", "control tokens"), ("double-bos", "doubled BOS"),
                                          ("text-control", "control tokens")])
def test_prompting_mistakes_are_caught(setup, mode, problem):
    _, hf, f16, prompts = setup
    report = fidelity.compare(hf, f16, prompts[:2], mode=mode, greedy_tokens=8)
    assert not report["tokenization_match"]
    assert any(problem in p for p in fidelity.gate(report))


def test_qk_layout_and_control_token_types_are_caught(setup, tmp_path):
    """attn_q/attn_k left in HF's row order: the mini model's attention is nearly uniform, so its logits hardly
    change (top-1 97.9 % on one CPU, 99.2 % on another), but its weights are in the other rotary layout, whatever the
    CPU: relative error 1.4 against llama.cpp's order, 2e-4 (f16 rounding) against HF's."""
    _, hf, f16, prompts = setup
    config = json.loads((hf / "config.json").read_text())
    broken = failure_modes.broken_qk_layout(f16, tmp_path / "qk.gguf", config["num_attention_heads"],
                                            config["num_key_value_heads"])
    report = fidelity.compare(hf, broken, prompts[:1], greedy_tokens=8)
    assert report["tokenization_match"] and report["qk_tensors"] == 4 and report["qk_layout_as_expected"] is False
    assert report["qk_error"] > 1 and report["qk_error_other_layout"] < 1e-3
    assert any(p.startswith("attn_q/attn_k rows not in the order llama.cpp's rope expects") for p in fidelity.gate(report))
    as_text = failure_modes.control_tokens_as_text(f16, tmp_path / "ctl.gguf")
    report = fidelity.compare(hf, as_text, prompts[:2], greedy_tokens=8)
    assert not report["control_tokens_parsed"] and fidelity.gate(report)


def test_bf16_to_f16_overflow_is_caught(setup, tmp_path):
    _, hf, _, prompts = setup
    big = failure_modes.overflowing_copy(hf, tmp_path / "big")
    export(big, tmp_path / "big.gguf", "f16")
    report = fidelity.compare(big, tmp_path / "big.gguf", prompts[:2], greedy_tokens=8)
    assert any("NMSE inf" in p for p in fidelity.gate(report))
    export(big, tmp_path / "big-bf16.gguf", "bf16")  # bf16 keeps the range: the same model passes
    assert not fidelity.gate(fidelity.compare(big, tmp_path / "big-bf16.gguf", prompts[:2], greedy_tokens=8))


def test_pad_token_equal_to_eos_is_caught(setup, tmp_path):
    """Training with pad == EOS and labels masked by pad id never teaches EOS: HF and GGUF still agree with each
    other, but P(EOS) after the held-out reference answers falls far below the untouched base's (measured: 18x);
    trained the right way on the same rows for the same 60 steps it stays at the base's level."""
    import shutil

    from raftune import merge as merge_stage, train
    from raftune.export.stage import references
    from raftune.models import resolve_base

    config, _, _, prompts = setup
    reports = {}
    for name, collator in (("right", None), ("pad-eos", failure_modes.PadIsEosCollator)):
        run = mini_config(tmp_path / "runs", f"run={name}", "sft.max_steps=60", "sft.eval_strategy=no")
        shutil.copytree(config.stage_dir("data"), run.stage_dir("data"))
        train.run(run, make_collator=collator)
        hf = merge_stage.run(run)
        export(hf, tmp_path / f"{name}.gguf", "f16")
        refs = references(run)
        reports[name] = fidelity.compare(hf, tmp_path / f"{name}.gguf", prompts[:2], greedy_tokens=8, references=refs)
        reports[name]["base_eos_probability"] = fidelity.base_eos_probability(resolve_base(run), refs)
    right, broken = reports["right"], reports["pad-eos"]
    assert not fidelity.gate(right) and right["eos_probability"] > 10 * broken["eos_probability"]
    assert broken["tokenization_match"] and broken["nmse"] <= 1e-4  # the conversion itself is fine
    assert broken["eos_probability"] < broken["base_eos_probability"] / 10
    problems = fidelity.gate(broken)
    assert len(problems) == 1 and "EOS suppressed" in problems[0]


def test_merge_methods_and_the_unsafe_4bit_merge(setup, tmp_path):
    """The dequantized merge is the function that was trained (NF4 base + adapter); the 4-bit merge is caught."""
    from peft import PeftModel

    config, hf, _, prompts = setup
    adapter = config.stage_dir("train") / "adapter"
    report = merge(adapter, tmp_path / "dq", method="dequantized")
    assert {"layer", "lora_delta", "dequantized_vs_pristine"} <= set(report["layers"][0])
    tokenizer = load_tokenizer(str(hf))
    ids = torch.tensor([tokenizer(prompts[0][0])["input_ids"]])
    base, quantization = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"], \
        config.quantization
    trained = PeftModel.from_pretrained(load_model(base, quantization), str(adapter)).eval()
    with torch.no_grad():
        want = trained(ids).logits
        dequantized = load_model(str(tmp_path / "dq"))(ids).logits
        merge(adapter, tmp_path / "pr", method="pristine")
        pristine = load_model(str(tmp_path / "pr"))(ids).logits
    # the dequantized merge reproduces the trained model (up to bitsandbytes' arithmetic); the pristine one differs
    # from it by the NF4 rounding of the base, measured here at 27x more
    assert (dequantized - want).abs().max() < (pristine - want).abs().max() / 10

    load_model(base, quantization).save_pretrained(str(tmp_path / "nf4-base"))
    with pytest.raises(RaftuneError, match="4-bit"):  # a base stored in 4-bit is refused
        merge(adapter, tmp_path / "refused", base=str(tmp_path / "nf4-base"))
    unsafe = merge(adapter, tmp_path / "m4", unsafe_4bit=True)
    assert unsafe["method"] == "unsafe-4bit" and unsafe["mean"]["unsafe_4bit_vs_pristine"] > 0
    export(tmp_path / "m4", tmp_path / "m4.gguf", "f16")
    assert fidelity.gate(fidelity.compare(tmp_path / "dq", tmp_path / "m4.gguf", prompts, greedy_tokens=8))


def test_lora_gguf_reads_back(setup, tmp_path):
    from gguf import GGUFReader

    config, hf, _, _ = setup
    adapter = config.stage_dir("train") / "adapter"
    base = json.loads((adapter / "adapter_config.json").read_text())["base_model_name_or_path"]
    facts = export_lora(adapter, base, tmp_path / "adapter.gguf")
    reader = GGUFReader(facts["path"])
    assert reader.fields["general.type"].contents() == "adapter"
    layers = 7 * json.loads((hf / "config.json").read_text())["num_hidden_layers"]
    assert len(reader.tensors) == 2 * layers  # lora_a and lora_b for each targeted projection


def test_export_errors_are_one_line(setup, tmp_path, capsys):
    _, hf, _, _ = setup
    no_tokenizer = tmp_path / "no-tok"
    no_tokenizer.mkdir()
    (no_tokenizer / "config.json").write_text((hf / "config.json").read_text())
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    for name in ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "model.safetensors"):
        (foreign / name).write_bytes((hf / name).read_bytes())
    (foreign / "config.json").write_text(json.dumps({**json.loads((hf / "config.json").read_text()),
                                                     "architectures": ["FooForCausalLM"]}))
    for model, expected in ((no_tokenizer, "no tokenizer"), (foreign, "FooForCausalLM")):
        assert cli.main(["export", "--model", str(model), "--out", str(tmp_path / "x.gguf")]) == 2
        err = capsys.readouterr().err.strip()
        assert expected in err and "\n" not in err
        assert not list(tmp_path.glob("x*"))  # nothing that looks finished


def test_commands_given_every_input_run_outside_the_repository(setup, tmp_path, monkeypatch, capsys):
    """fidelity --prompts and export --model --prompts read no recipe: they run in a folder without configs/."""
    _, hf, f16, prompts = setup
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps({"question": q, "documents": d}) + "\n"
                                                    for q, d in prompts[:2]))
    assert cli.main(["fidelity", "--hf", str(hf), "--gguf", str(f16), "--prompts", "prompts.jsonl",
                     "--json", "report.json", "export.greedy_tokens=4"]) == 0
    report = json.loads((tmp_path / "report.json").read_text())
    assert report["passed"] and report["prompts"] == 2 and report["greedy_tokens"] == 4
    assert cli.main(["export", "--model", str(hf), "--out", "m.gguf", "--prompts", "prompts.jsonl"]) == 0
    report = json.loads((tmp_path / "m.fidelity.json").read_text())
    assert report["passed"] and report["prompts"] == 2 and report["greedy_tokens"] == 64  # raftune's default
    capsys.readouterr()
    # without --prompts the test set of a recipe is needed: the line says which recipe is missing and what to pass
    assert cli.main(["fidelity", "--hf", str(hf), "--gguf", str(f16), "--json", "x.json"]) == 2
    assert capsys.readouterr().err == (f"raftune: error: no --config given, and the default recipe "
                                       f"configs/demo-gemma.yaml is not in {tmp_path}: run in the repository or pass "
                                       "--config RECIPE (or --prompts)\n")


def test_fidelity_cli_reports_eos_after_references(setup, tmp_path):
    config, hf, f16, _ = setup
    out = tmp_path / "report.json"
    assert cli.main(["fidelity", "--hf", str(hf), "--gguf", str(f16), "--json", str(out),
                     "--references", str(config.stage_dir("data") / "hf_eval.jsonl")]) == 0
    report = json.loads(out.read_text())
    assert report["eos_references"] == 2 and 0 < report["eos_probability"] < 1
    assert abs(report["eos_probability"] - report["eos_probability_hf"]) < 1e-3  # f16 agrees with HF
