"""`raftune export`: merged model -> GGUF files via llama.cpp's converter, each read back and checked."""

from __future__ import annotations

import os

from raftune import RaftuneError
from raftune.config import RunConfig
from raftune.export.converter import convert, source_info
from raftune.export.gguf_check import check_gguf
from raftune.manifest import Stage, sha256_file

CONVERTER_TYPES = {"f32", "f16", "bf16", "q8_0"}


def export(model_dir, out_path, gguf_type: str) -> dict:
    """Convert to a temporary name and rename only after the read-back check passed."""
    if gguf_type not in CONVERTER_TYPES:
        raise RaftuneError(f"unsupported GGUF type '{gguf_type}' (expected one of {sorted(CONVERTER_TYPES)})")
    tmp = out_path.with_name(out_path.name + ".partial")
    try:
        convert(model_dir, tmp, gguf_type)
        facts = check_gguf(tmp, model_dir)
        os.replace(tmp, out_path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return {"path": str(out_path), "type": gguf_type, "bytes": out_path.stat().st_size,
            "sha256": sha256_file(out_path), **facts}


def run(config: RunConfig):
    model_dir = config.stage_dir("merge") / "model"
    if not (model_dir / "config.json").is_file():
        raise RaftuneError(f"no merged model at {model_dir}; run `raftune merge` first")
    stage = Stage(config, "export", {"model": str(model_dir), "converter": source_info()})
    files = {}
    for gguf_type in config.export.types:
        print(f"export: converting {model_dir} to {gguf_type} with llama.cpp's convert_hf_to_gguf.py")
        files[gguf_type] = export(model_dir, stage.dir / f"model-{gguf_type}.gguf", gguf_type)
        print(f"export: {files[gguf_type]['path']} ({files[gguf_type]['bytes'] / 1e6:.1f} MB), read back and checked")
    stage.outputs = files
    stage.finish()
    return files
