from pathlib import Path

import pytest

from raftune import RaftuneError
from raftune.config import load_config

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = sorted((ROOT / "configs").glob("*.yaml"))


def test_there_are_configs():
    assert {p.name for p in CONFIGS} >= {"demo-tiny.yaml", "mistral-7b-qlora-raft.yaml"}


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_every_config_loads_and_names_its_command(path):
    first = path.read_text().splitlines()[0]
    assert first.startswith(("# raftune ", "# accelerate launch ")) and str(path.relative_to(ROOT)) in first
    config = load_config(path)
    assert config.lora["r"] > 0 and config.sft["learning_rate"] > 0
    from peft import LoraConfig
    from transformers import BitsAndBytesConfig

    LoraConfig(**config.lora)
    BitsAndBytesConfig(**config.quantization)


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "accelerate").glob("*.yaml")), ids=lambda p: p.name)
def test_accelerate_configs_name_their_launch_command(path):
    import yaml

    first = path.read_text().splitlines()[0]
    assert first.startswith("# accelerate launch --config_file " + str(path.relative_to(ROOT)))
    recipe = first.split("--config ")[1].split()[0]
    load_config(ROOT / recipe)  # the recipe it launches exists and loads
    assert yaml.safe_load(path.read_text())["num_processes"] == 2


def test_unknown_key_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("run: x\nsft:\n  learnin_rate: 1\n")
    with pytest.raises(RaftuneError, match=r"bad.yaml: unknown key 'sft.learnin_rate'"):
        load_config(path)
    path.write_text("runn: x\n")
    with pytest.raises(RaftuneError, match=r"unknown key 'runn'"):
        load_config(path)


def test_overrides_take_yaml_values():
    config = load_config(ROOT / "configs/demo-tiny.yaml", ["sft.max_steps=7", "export.types=[f16]", "run=quick"])
    assert config.sft["max_steps"] == 7 and config.export.types == ["f16"] and config.run == "quick"
    with pytest.raises(RaftuneError, match="key=value"):
        load_config(ROOT / "configs/demo-tiny.yaml", ["sft.max_steps"])


def test_missing_config_file():
    with pytest.raises(RaftuneError, match="config file not found: nope.yaml"):
        load_config("nope.yaml")


def test_quantization_none_overrides_an_extended_recipes_nf4(tmp_path):
    (tmp_path / "lora.yaml").write_text(f"extends: {ROOT / 'configs/demo-tiny.yaml'}\nquantization: none\n")
    assert load_config(ROOT / "configs/demo-tiny.yaml").quantization["load_in_4bit"] is True
    assert load_config(tmp_path / "lora.yaml").quantization == {}
    assert load_config(ROOT / "configs/demo-tiny.yaml", ["quantization=none"]).quantization == {}


def test_a_bad_evaluate_models_entry_is_rejected_when_the_recipe_loads():
    """Not after training: an `evaluate.models` entry is checked with the rest of the recipe."""
    with pytest.raises(RaftuneError, match=r"evaluate.models\[0\]: kind hf needs 'path'"):
        load_config(ROOT / "configs" / "demo-tiny.yaml", ["evaluate.models=[{name: x, kind: hf}]"])


def test_the_readme_recipe_for_your_own_documents_trains_on_the_demos_rows_and_answers_from_yours(tmp_path, monkeypatch):
    from raftune.data.retrieval import answer_corpus

    section = (ROOT / "README.md").read_text(encoding="utf-8").split("## Your own documents and data", 1)[1]
    recipe = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    recipe = recipe.replace("configs/demo-qwen.yaml", str(ROOT / "configs" / "demo-qwen.yaml"))
    (tmp_path / "my-regulations.yaml").write_text(recipe)
    monkeypatch.chdir(ROOT)  # the recipes' paths are relative to the repository root
    config = load_config(tmp_path / "my-regulations.yaml")
    assert (config.run, config.base, config.evaluate.testset) == ("my-regulations", "qwen2.5-coder-0.5b", "my-testset.json")
    assert (config.data.qac, answer_corpus(config)) == ("datasets/demo/qac.json", "my-documents/")
