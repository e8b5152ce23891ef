"""Stage manifests and atomic writes: every stage folder gets a small JSON saying what went in and how long it took.

A stage writes into `<stage>.partial` beside its folder and renames it into place when it has finished, so a kill or
an error leaves the previous complete output (or none) and never a mix of two runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import importlib.metadata
import json
import os
import platform
import re
import shutil
import tempfile
import time
from pathlib import Path

from raftune import RaftuneError

# what a base model folder built by raftune says of itself: the packaged model it came from, or the tiny model's spec
PROVENANCE_FILE = "raftune_base.json"
TINY_FILE = "raftune_tiny.json"

LIBRARIES = ["raftune", "torch", "transformers", "tokenizers", "peft", "trl", "accelerate", "bitsandbytes",
             "datasets", "gguf", "llama-cpp-python", "sentence-transformers", "sentencepiece"]


def base_provenance(name: str) -> dict:
    """{"base": name} and, for a folder raftune built, where it came from (recorded in the stages that use it)."""
    path = Path(name)
    info = {"base": name}
    if (path / TINY_FILE).is_file():
        info["tiny"] = json.loads((path / TINY_FILE).read_text())
    if (path / PROVENANCE_FILE).is_file():
        info["packaged"] = json.loads((path / PROVENANCE_FILE).read_text())
    return info


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
    make_dir(path.parent)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


_USERINFO = re.compile(r"(?<=://)[^/@\s]*@")


def strip_credentials(value):
    """`user:password@` removed from every URL in a string, or in every string of a dict or list: what goes into a
    manifest, a log line, an error or a cache key. The connection itself still uses the URL as configured."""
    if isinstance(value, str):
        return _USERINFO.sub("", value)
    if isinstance(value, dict):
        return {k: strip_credentials(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strip_credentials(v) for v in value]
    return value


def make_dir(path: str | Path) -> Path:
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise RaftuneError(f"cannot create the folder {path}: {err.strerror or err}") from None
    return path


def write_text(path: str | Path, text: str) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, obj) -> None:
    write_text(path, json.dumps(obj, indent=2, ensure_ascii=False, default=str) + "\n")


def write_jsonl(path: str | Path, rows) -> None:
    write_text(path, "".join(json.dumps(row, ensure_ascii=False, default=str) + "\n" for row in rows))


def main_process() -> bool:
    """Under `accelerate launch` every process runs the stage; only the first one prepares and commits its folder."""
    return os.environ.get("RANK", "0") == "0"


def _old(final: Path) -> Path:
    return final.with_name(final.name + ".old")


def recover(final: Path) -> None:
    """Finish a commit that a kill interrupted between its two renames (see `commit`)."""
    old = _old(final)
    if old.exists() and main_process():
        if final.exists():
            shutil.rmtree(old)
        else:
            os.replace(old, final)


def commit(work: Path, final: Path) -> None:
    """Put a finished `work` folder in the place of `final`: the old output is moved aside, the new one renamed into
    place, then the old one removed. A kill in between leaves `final.old`, which `recover` puts back or removes."""
    old = _old(final)
    if old.exists():
        shutil.rmtree(old)
    if final.exists():
        os.replace(final, old)
    os.replace(work, final)
    shutil.rmtree(old, ignore_errors=True)


class Stage:
    """A stage's output folder, written all or nothing, and its `manifest.json`.

    While the stage runs, `self.dir` is the work folder `<stage>.partial` beside the output folder: everything goes
    there. `finish()` writes the manifest last (it lists every file it covers), then renames the work folder into
    place and points `self.dir` at it. An unfinished work folder found at the start is said so and started over, or,
    with `keep=True` (train --resume), continued."""

    def __init__(self, config, name: str, inputs: dict | None = None, keep: bool = False):
        self.config, self.name = config, name
        self.final = config.stage_dir(name)
        self.dir = self.final.with_name(name + ".partial")
        recover(self.final)
        if self.dir.exists() and not keep and main_process():
            print(f"{name}: {self.dir} is the incomplete output of an earlier run that did not finish; starting over")
            shutil.rmtree(self.dir)
        make_dir(self.dir)
        self.inputs = dict(inputs or {})
        self.outputs: dict = {}
        self.extra: dict = {}
        self.started = time.time()

    def relocate(self, value):
        """Paths inside the work folder as they are named once it is in place."""
        if isinstance(value, str):
            return value.replace(str(self.dir), str(self.final))
        if isinstance(value, dict):
            return {k: self.relocate(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.relocate(v) for v in value]
        return value

    def finish(self) -> Path:
        self.outputs = self.relocate(self.outputs)
        files = {str(p.relative_to(self.dir)): p.stat().st_size for p in sorted(self.dir.rglob("*")) if p.is_file()}
        manifest = {
            "stage": self.name,
            "run": self.config.run,
            "inputs": self.relocate(self.inputs),
            "outputs": self.outputs,
            "config": dataclasses.asdict(self.config),
            "versions": library_versions(),
            "seconds": round(time.time() - self.started, 2),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            **self.relocate(self.extra),
            "files": files,  # what this manifest covers: every file of the folder, in bytes
        }
        write_json(self.dir / "manifest.json", strip_credentials(manifest))
        commit(self.dir, self.final)
        self.dir = self.final
        return self.dir / "manifest.json"


def require_finished(config, name: str, command: str) -> Path:
    """The folder of a finished stage, or one line saying that it is missing or incomplete and what to run."""
    final = config.stage_dir(name)
    recover(final)
    if (final / "manifest.json").is_file():
        return final
    partial = final.with_name(name + ".partial")
    state = "is incomplete (no manifest.json)" if final.exists() else "does not exist"
    left = f" ({partial} is what an unfinished run left)" if partial.exists() else ""
    raise RaftuneError(f"{final} {state}{left}; run `{command}` first")
