"""llama.cpp's converter, taken from the very llama-cpp-python release that the runtime is built from.

`python -m raftune.export.converter` (run by `make install`) downloads the pinned llama-cpp-python sdist from the
package index once, and unpacks `convert_hf_to_gguf.py`, `convert_lora_to_gguf.py`, `conversion/` and `gguf-py/`
into `convert/llama.cpp/` (ignored by git). Converter and runtime are then the same llama.cpp commit, which
SOURCE.json records and every export manifest repeats. Conversion itself needs no network.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

from raftune import RaftuneError
from raftune.manifest import sha256_file

ROOT = Path(__file__).resolve().parents[3]
CONVERTER_DIR = ROOT / "convert" / "llama.cpp"
WANTED = ("convert_hf_to_gguf.py", "convert_lora_to_gguf.py", "conversion/", "gguf-py/", "LICENSE")


def runtime_version() -> str:
    return importlib.metadata.version("llama-cpp-python")


def source_info(folder: Path = CONVERTER_DIR) -> dict:
    path = folder / "SOURCE.json"
    if not path.is_file():
        raise RaftuneError(f"llama.cpp converter not installed in {folder}; run `make install` "
                           "(or `python -m raftune.export.converter`)")
    info = json.loads(path.read_text())
    if info["llama_cpp_python"] != runtime_version():
        raise RaftuneError(f"converter in {folder} is from llama-cpp-python {info['llama_cpp_python']}, the runtime is "
                           f"{runtime_version()}; rerun `python -m raftune.export.converter`")
    return info


def install(folder: Path = CONVERTER_DIR) -> dict:
    version = runtime_version()
    if (folder / "SOURCE.json").is_file() and json.loads((folder / "SOURCE.json").read_text())["llama_cpp_python"] == version:
        return json.loads((folder / "SOURCE.json").read_text())
    with tempfile.TemporaryDirectory() as tmp:
        print(f"downloading the llama-cpp-python {version} source distribution for llama.cpp's converter")
        subprocess.run([sys.executable, "-m", "pip", "download", f"llama-cpp-python=={version}", "--no-deps",
                        "--no-binary", ":all:", "--quiet", "-d", tmp], check=True)
        sdist = next(Path(tmp).glob("llama_cpp_python-*.tar.gz"))
        staging = Path(tmp) / "out"
        commit = None
        with tarfile.open(sdist) as tar:
            for member in tar.getmembers():
                parts = member.name.split("/", 1)
                if len(parts) < 2:
                    continue
                inner = parts[1]
                if inner == ".git/modules/vendor/llama.cpp/HEAD":
                    commit = tar.extractfile(member).read().decode().strip()
                if inner.startswith("vendor/llama.cpp/"):
                    rel = inner[len("vendor/llama.cpp/"):]
                    if any(rel == w or (w.endswith("/") and rel.startswith(w)) for w in WANTED) and member.isfile():
                        target = staging / rel
                        target.parent.mkdir(parents=True, exist_ok=True)
                        target.write_bytes(tar.extractfile(member).read())
        if not (staging / "convert_hf_to_gguf.py").is_file():
            raise RaftuneError(f"{sdist.name} holds no vendor/llama.cpp/convert_hf_to_gguf.py")
        info = {"llama_cpp_python": version, "sdist": sdist.name, "sdist_sha256": sha256_file(sdist),
                "llama_cpp_commit": commit}
        (staging / "SOURCE.json").write_text(json.dumps(info, indent=2) + "\n")
        if folder.exists():
            shutil.rmtree(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(staging), folder)
    print(f"llama.cpp converter ({commit}) unpacked into {folder}")
    return info


def _run_script(script: str, args: list[str], what, folder: Path) -> None:
    """Run one of llama.cpp's converter scripts; on failure raise with its last error line."""
    source_info(folder)
    result = subprocess.run([sys.executable, str(folder / script), *args], capture_output=True, text=True)
    if result.returncode != 0:
        lines = [line for line in (result.stderr or result.stdout).splitlines() if line.strip()]
        errors = [line for line in lines if re.search(r"Error|error:|Exception", line)]
        raise RaftuneError(f"llama.cpp {script} failed on {what}: {(errors or lines or ['no output'])[-1]}")


def convert(model_dir: Path, outfile: Path, outtype: str, folder: Path = CONVERTER_DIR) -> None:
    """HF model folder -> GGUF with convert_hf_to_gguf.py (f32, f16, bf16 or q8_0)."""
    _run_script("convert_hf_to_gguf.py", [str(model_dir), "--outfile", str(outfile), "--outtype", outtype],
                model_dir, folder)


def convert_lora(adapter_dir: Path, base_dir: Path, outfile: Path, outtype: str = "f16",
                 folder: Path = CONVERTER_DIR) -> None:
    """PEFT adapter -> GGUF LoRA with convert_lora_to_gguf.py, for users who keep base and adapter apart."""
    _run_script("convert_lora_to_gguf.py", [str(adapter_dir), "--base", str(base_dir), "--outfile", str(outfile),
                                            "--outtype", outtype], adapter_dir, folder)


def quantize(source: Path, outfile: Path, gguf_type: str, threads: int | None = None) -> None:
    """f16/f32 GGUF -> a llama.cpp quantisation type (q4_k_m, q5_k_m, q6_k, ...) with llama_model_quantize."""
    import llama_cpp

    ftype = getattr(llama_cpp, f"LLAMA_FTYPE_MOSTLY_{gguf_type.upper()}", None)
    if ftype is None:
        raise RaftuneError(f"llama.cpp has no quantisation type '{gguf_type}'")
    params = llama_cpp.llama_model_quantize_default_params()
    params.ftype = ftype
    params.nthread = threads or 0
    if llama_cpp.llama_model_quantize(str(source).encode(), str(outfile).encode(), params) != 0:
        raise RaftuneError(f"llama.cpp could not quantise {source} to {gguf_type}")

if __name__ == "__main__":
    install()
