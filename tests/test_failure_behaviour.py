"""Nothing lost, nothing half-written: a killed or failing stage leaves the previous complete output (or none), a
rerun gives the same bytes; bad values, unreachable endpoints and bad paths end in one line naming them; credentials
in URLs never reach a file or a cache key. (Training's kills and resume: tests/test_resume.py.)"""

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from raftune import RaftuneError, manifest
from raftune.cli import main
from raftune.data import stage as data_stage
from raftune.data.formats import parse_context_repr
from raftune.data.generators import ResponseCache, make_generator
from raftune.train import _lines_up_to, checkpoint_problem

from conftest import MINI_OVERRIDES, ROOT, ChatStub, free_port, mini_config

CONFIG = str(ROOT / "configs" / "demo-tiny.yaml")


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def one_error_line(capsys) -> str:
    """The error: the last line of stderr (progress bars may come before it), and no traceback."""
    err = capsys.readouterr().err
    line = err.rstrip("\n").rsplit("\n", 1)[-1].rsplit("\r", 1)[-1]
    assert line.startswith("raftune: error: ") and "Traceback" not in err, err
    return line


# --- the data stage: killed mid-write, failing at its manifest, rerun ---------------------------------------------

# `raftune data build` that SIGKILLs itself halfway through its 7th file (the RAFT rows in the first format)
KILLED_AT_THE_7TH_WRITE = """
import os, signal, sys
import raftune.manifest as manifest
real, calls = manifest.write_text, [0]
def torn(path, text):
    calls[0] += 1
    if calls[0] == 7:
        with open(path, "w", encoding="utf-8") as out:
            out.write(text[: len(text) // 2])
        os.kill(os.getpid(), signal.SIGKILL)
    real(path, text)
manifest.write_text = torn
from raftune.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_or_failing_data_build_keeps_the_finished_output_and_a_rerun_is_byte_identical(tmp_path, capsys,
                                                                                              monkeypatch):
    straight = mini_config(tmp_path / "straight")
    data_stage.run(straight)
    reference = snapshot(straight.stage_dir("data"))

    config = mini_config(tmp_path / "runs", "data.seed=1")  # a finished run with another seed
    data_stage.run(config)
    finished = snapshot(config.stage_dir("data"))
    assert finished != reference

    killed = subprocess.run([sys.executable, "-c", KILLED_AT_THE_7TH_WRITE, "data", "build", "--config", CONFIG,
                             *MINI_OVERRIDES, f"runs_dir={tmp_path / 'runs'}", "run=mini"], capture_output=True)
    assert killed.returncode == -signal.SIGKILL
    partial = config.stage_dir("data").with_name("data.partial")
    assert len(list(partial.glob("*.jsonl"))) == 7 and not (partial / "manifest.json").exists()
    assert snapshot(config.stage_dir("data")) == finished  # the finished run, untouched

    # a rerun that fails while writing its manifest: the finished run is still untouched
    real = manifest.write_text

    def fail_at_the_manifest(path, text):
        if Path(path).name == "manifest.json":
            raise OSError("disk full")
        real(path, text)

    monkeypatch.setattr(manifest, "write_text", fail_at_the_manifest)
    with pytest.raises(OSError):
        data_stage.run(mini_config(tmp_path / "runs"))
    assert snapshot(config.stage_dir("data")) == finished
    monkeypatch.setattr(manifest, "write_text", real)

    capsys.readouterr()
    data_stage.run(mini_config(tmp_path / "runs"))
    out = capsys.readouterr().out
    assert f"data: {partial} is the incomplete output of an earlier run that did not finish; starting over" in out
    assert not partial.exists()
    rerun = snapshot(config.stage_dir("data"))
    assert rerun.keys() == reference.keys()
    for name in reference:
        if name != "manifest.json":  # it names its own run folder and times
            assert rerun[name] == reference[name], name
    written = json.loads(rerun["manifest.json"])
    assert written["files"] == json.loads(reference["manifest.json"])["files"]
    assert written["outputs"]["dataset"] == str(config.stage_dir("data") / "raft")


def test_training_on_an_unfinished_data_stage_says_so(tmp_path, capsys):
    config = mini_config(tmp_path)
    config.stage_dir("data").with_name("data.partial").mkdir(parents=True)
    assert main(["train", "--config", CONFIG, *MINI_OVERRIDES, f"runs_dir={tmp_path}", "run=mini"]) == 2
    err = one_error_line(capsys)
    assert "mini/data does not exist (" in err and "data.partial is what an unfinished run left" in err
    assert "run `raftune data build` first" in err


def test_a_commit_killed_between_its_renames_is_completed(tmp_path):
    final = tmp_path / "run" / "data"
    old = final.with_name("data.old")
    old.mkdir(parents=True)
    (old / "manifest.json").write_text("{}")
    manifest.recover(final)  # killed after moving the old output aside, before the new one was renamed in
    assert (final / "manifest.json").is_file() and not old.exists()


# --- config values, rejected at load -------------------------------------------------------------------------------

BAD_VALUES = [
    ("sft.learning_rate=fast", "sft.learning_rate='fast'", "a number > 0"),
    ("sft.learning_rate=-1e-3", "sft.learning_rate=-0.001", "a number > 0"),
    ("sft.num_train_epochs=-1", "sft.num_train_epochs=-1", "a number > 0"),
    ("sft.max_steps=2.5", "sft.max_steps=2.5", "an integer >= -1"),
    ("sft.per_device_train_batch_size=0", "sft.per_device_train_batch_size=0", "an integer >= 1"),
    ("sft.gradient_accumulation_steps=0", "sft.gradient_accumulation_steps=0", "an integer >= 1"),
    ("sft.max_length=0", "sft.max_length=0", "an integer >= 1"),
    ("sft.warmup_steps=-5", "sft.warmup_steps=-5", "a number >= 0"),
    ("sft.save_strategy=false", "sft.save_strategy=False", "one of no, steps, epoch, best"),
    ("lora.r=0", "lora.r=0", "an integer >= 1"),
    ("lora.lora_alpha=big", "lora.lora_alpha='big'", "a number > 0"),
    ("lora.lora_dropout=1.5", "lora.lora_dropout=1.5", "a number in [0, 1)"),
    ("quantization.bnb_4bit_quant_type=nf3", "quantization.bnb_4bit_quant_type='nf3'", "one of nf4, fp4"),
    ("data.rows_per_question=0", "data.rows_per_question=0", "an integer >= 1"),
    ("data.oracle_probability=2", "data.oracle_probability=2", "a number in [0, 1]"),
    ("data.num_distractors=-1", "data.num_distractors=-1", "an integer >= 0"),
    ("data.eval_fraction=1.5", "data.eval_fraction=1.5", "a number in [0, 1)"),
    ("data.seed=abc", "data.seed='abc'", "an integer"),
    ("data.formats=[hf,parquet]", "data.formats=['hf', 'parquet']", "a list, each item one of hf, completion, chat"),
    ("data.generator=gpt", "data.generator='gpt'", "one of extractive, openai, transformers"),
    ("train.approach=dpo", "train.approach='dpo'", "one of docs, qac, raft"),
    ("train.sample_prompts=-1", "train.sample_prompts=-1", "an integer >= 0"),
    ("fast.packing=maybe", "fast.packing='maybe'", "true or false"),
    ("fast.tokens_per_batch=-5", "fast.tokens_per_batch=-5", "an integer >= 0"),
    ("merge.method=fancy", "merge.method='fancy'", "one of dequantized, pristine"),
    ("export.types=[f16,q4_kx]", "export.types=['f16', 'q4_kx']", "a list, each item one of "),
    ("export.min_top1=2", "export.min_top1=2", "a number in [0, 1]"),
    ("export.fidelity_prompts=0", "export.fidelity_prompts=0", "an integer >= 1"),
    ("evaluate.top_k=0", "evaluate.top_k=0", "an integer >= 1"),
    ("evaluate.context=everything", "evaluate.context='everything'", "one of retrieved, given"),
    ("evaluate.retrieval_ks=[1,0]", "evaluate.retrieval_ks=[1, 0]", "a list, each item an integer >= 1"),
    ("evaluate.testset=[a]", "evaluate.testset=['a']", "a string"),
]


@pytest.mark.parametrize("override,shown,expected", BAD_VALUES, ids=[b[0].split("=")[0] for b in BAD_VALUES])
def test_a_bad_value_is_one_line_before_anything_loads(override, shown, expected, tmp_path, capsys, monkeypatch):
    import raftune.models

    def no_model(*args, **kwargs):
        raise AssertionError("a model was loaded")

    for name in ("load_model", "load_tokenizer", "resolve_base"):
        monkeypatch.setattr(raftune.models, name, no_model)
    assert main(["train", "--config", CONFIG, *MINI_OVERRIDES, f"runs_dir={tmp_path}", "run=mini", override]) == 2
    err = one_error_line(capsys)
    assert f"demo-tiny.yaml (override {override.split('=')[0]}=...): {shown}: expected {expected}" in err
    assert not any(tmp_path.iterdir())  # no folder made, no data read


def test_extends_takes_a_list_and_a_bad_value_names_the_file_it_is_in(tmp_path):
    from raftune.config import load_config

    (tmp_path / "a.yaml").write_text("run: a\nsft:\n  learning_rate: 1.0e-3\n  max_steps: 5\n")
    (tmp_path / "b.yaml").write_text("sft:\n  max_steps: 7\nlora:\n  r: 0\n")
    (tmp_path / "child.yaml").write_text("extends: [a.yaml, b.yaml]\nrun: child\n")
    with pytest.raises(RaftuneError, match=r"b.yaml: lora.r=0: expected an integer >= 1$"):
        load_config(tmp_path / "child.yaml")
    (tmp_path / "b.yaml").write_text("sft:\n  max_steps: 7\n")
    config = load_config(tmp_path / "child.yaml")
    assert (config.run, config.sft) == ("child", {"learning_rate": 1e-3, "max_steps": 7})
    (tmp_path / "child.yaml").write_text("extends: {a: a.yaml}\n")
    with pytest.raises(RaftuneError, match=r"child.yaml: extends=\{'a': 'a.yaml'\}: expected a file or a list of files"):
        load_config(tmp_path / "child.yaml")


# --- endpoints and credentials ---------------------------------------------------------------------------------------

def generator_overrides(url: str) -> list[str]:
    return ["data.generator=openai", "data.generator_model=m", f"data.generator_base_url={url}",
            "data.generator_max_retries=0", "data.rows_per_question=1"]


def test_unreachable_generator_endpoint_is_one_line_naming_url_and_cache(tmp_path, capsys):
    url = f"http://127.0.0.1:{free_port()}/v1"
    code = main(["data", "build", "--config", CONFIG, *MINI_OVERRIDES, f"runs_dir={tmp_path}", "run=mini",
                 *generator_overrides(url.replace("://", "://user:hunter2@"))])
    assert code == 2
    err = one_error_line(capsys)
    assert f"data.generator_base_url: endpoint {url} unreachable after 0 retries (APIConnectionError" in err
    assert f"the 0 answers so far are kept in {tmp_path / 'mini' / 'cache' / 'generator.jsonl'}" in err
    assert "hunter2" not in err and not (tmp_path / "mini" / "data").exists()


def test_credentials_in_urls_reach_no_file_and_no_cache_key(tmp_path):
    server = ChatStub(reply=lambda prompt: "##begin_quote##x##end_quote##\n<ANSWER>: x")
    try:
        plain = server.url
        secret_url = plain.replace("://", "://user:hunter2@")
        config = mini_config(tmp_path, *generator_overrides(secret_url))
        data_stage.run(config)
        assert server.requests > 0
        data_manifest = json.loads((config.stage_dir("data") / "manifest.json").read_text())
        assert data_manifest["inputs"]["generator_base_url"] == plain
        assert data_manifest["config"]["data"]["generator_base_url"] == plain

        config.evaluate.run_models, config.evaluate.recorded = False, []
        config.evaluate.models = [{"kind": "openai", "name": "api", "model": "m", "base_url": secret_url,
                                   "max_retries": 0}]
        from raftune.evaluate import stage as evaluate_stage

        evaluate_stage.run(config)
        assert json.loads((config.stage_dir("evaluate") / "manifest.json").read_text())["inputs"]["models"][0][
            "base_url"] == plain
    finally:
        server.server.shutdown()
    for path in tmp_path.rglob("*"):
        if path.is_file():
            assert b"hunter2" not in path.read_bytes(), path
    # the generator's cache keys on the endpoint without its credentials: the same model elsewhere is another model
    def model_key(url):
        return make_generator(mini_config(tmp_path, *generator_overrides(url)).data, tmp_path / "c.jsonl").model

    prompt = "Frage?"
    assert ResponseCache.key(model_key(secret_url), prompt) == ResponseCache.key(model_key(plain), prompt)
    assert ResponseCache.key(model_key(plain), prompt) != ResponseCache.key(model_key("http://other:1/v1"), prompt)
    assert manifest.strip_credentials({"u": ["https://a:b@h/x", "see http://tok@h:1/v1 now"]}) == \
        {"u": ["https://h/x", "see http://h:1/v1 now"]}


# --- other one-line errors -----------------------------------------------------------------------------------------

def test_a_missing_tokenizer_and_an_out_that_cannot_be_made_are_one_line(tmp_path, capsys):
    rows = ROOT / "tests" / "fixtures" / "mini" / "qac.json"
    assert main(["data", "inspect", str(rows), "--tokenizer", str(tmp_path / "no-such-tokenizer")]) == 2
    assert f"--tokenizer {tmp_path / 'no-such-tokenizer'}: not a tokenizer folder or hub id" in one_error_line(capsys)
    blocker = tmp_path / "file"
    blocker.write_text("")
    raft = tmp_path / "raft.jsonl"
    raft.write_text(json.dumps({"question": "Q?", "context": {"sentences": [["Ein Satz mit genug Text darin."]]},
                                "oracle_context": "Ein Satz mit genug Text darin.",
                                "cot_answer": "##begin_quote##Ein Satz##end_quote## <ANSWER>: ja"}) + "\n")
    assert main(["data", "clean", str(raft), "--out", str(blocker / "out")]) == 2
    assert f"cannot create the folder {blocker / 'out'}" in one_error_line(capsys)


def test_a_context_nested_too_deeply_is_a_value_error():
    for text in ["-" * 100000 + "1", "1" + "+1" * 100000, "x" + ".y" * 100000]:
        with pytest.raises(ValueError, match="nested too deeply"):
            parse_context_repr(text)


# --- checkpoints and logs (the pieces of --resume) --------------------------------------------------------------------

def test_checkpoint_problems_and_log_trimming(tmp_path):
    import torch
    from safetensors.torch import save_file

    good = tmp_path / "checkpoint-8"
    good.mkdir()
    (good / "trainer_state.json").write_text(json.dumps({"global_step": 8}))
    save_file({"w": torch.zeros(64)}, good / "adapter_model.safetensors")
    torch.save({"x": torch.zeros(4)}, good / "optimizer.pt")
    assert checkpoint_problem(good) is None
    empty = tmp_path / "checkpoint-12"
    empty.mkdir()
    assert checkpoint_problem(empty) == "trainer_state.json unreadable (FileNotFoundError)"
    weights = (good / "adapter_model.safetensors").read_bytes()
    (good / "adapter_model.safetensors").write_bytes(weights[: len(weights) // 2])
    assert checkpoint_problem(good).startswith("adapter_model.safetensors unreadable")
    (good / "adapter_model.safetensors").write_bytes(weights)
    optimizer = (good / "optimizer.pt").read_bytes()
    (good / "optimizer.pt").write_bytes(optimizer[:-30])
    assert checkpoint_problem(good) == "optimizer.pt truncated"

    log = tmp_path / "loss.jsonl"
    log.write_text("".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 4, 8, 9, 12)) + '{"step": 1')
    assert [json.loads(line)["step"] for line in _lines_up_to(log, 8)] == [1, 4, 8]
