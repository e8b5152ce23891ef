"""Stage manifests and atomic writes: every stage folder gets a small JSON saying what went in and how long it took."""

from __future__ import annotations

import contextlib
import hashlib
import importlib.metadata
import json
import os
import platform
import tempfile
import time
from pathlib import Path

LIBRARIES = ["raftune", "torch", "transformers", "tokenizers", "peft", "trl", "accelerate", "bitsandbytes",
             "datasets", "gguf", "llama-cpp-python", "sentence-transformers", "sentencepiece"]


def library_versions() -> dict[str, str | None]:
    versions = {"python": platform.python_version()}
    for name in LIBRARIES:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def sha256_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def atomic_path(path: str | Path):
    """Yield a temporary path beside `path`; rename it onto `path` only if the block succeeds.

    A crash or an error never leaves a file that looks finished."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows) -> None:
    write_text(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


class Stage:
    """Times a stage and writes `<stage dir>/manifest.json` when it finishes."""

    def __init__(self, config, name: str, inputs: dict | None = None):
        self.config, self.name = config, name
        self.dir = config.stage_dir(name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.inputs = dict(inputs or {})
        self.outputs: dict = {}
        self.extra: dict = {}
        self.started = time.time()

    def finish(self) -> Path:
        from raftune.config import config_to_dict

        manifest = {
            "stage": self.name,
            "run": self.config.run,
            "inputs": self.inputs,
            "outputs": self.outputs,
            "config": config_to_dict(self.config),
            "versions": library_versions(),
            "seconds": round(time.time() - self.started, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.extra,
        }
        from raftune.models import NAMED_BASES, base_provenance, named_base

        if self.config.base in NAMED_BASES:  # a packaged model: which package, version and file it came from
            manifest["base_provenance"] = base_provenance(named_base(self.config.base))
        write_json(self.dir / "manifest.json", manifest)
        return self.dir / "manifest.json"
