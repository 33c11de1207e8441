"""WebDataset shards on disk: writing them, and reading their tar headers and samples. No torch here.

Shards are plain WebDataset tars (members `{key}.json`, `{key}.0.jpg`, ...; webdataset.WebDataset reads them,
tested). They are written with the standard library's tarfile rather than webdataset's ShardWriter because
importing webdataset imports torch, which alone costs ~500 MB of RSS: a data build should not. Reading walks tar
headers and seeks over data, so a reader can index a shard without loading it (stream.py builds on this).
"""
from __future__ import annotations

import io
import json
import os
import tarfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from mmtune.data.sample import Sample, dumps
from mmtune.errors import DataError

INDEX_NAME = "index.json"


class ShardSink:
    """Write samples to `out_dir/{prefix}-000000.tar` ... (`maxcount` samples or `maxsize` bytes each) and
    `{prefix}-index.json` with per-shard counts.

    Keys are sequence numbers (ids may hold dots or slashes, which tar keys cannot); the id lives in the JSON.
    A prefix that already has shards in `out_dir` is refused, so a rebuild never mixes old and new shards.
    """

    def __init__(self, out_dir: str | Path, prefix: str = "data", maxcount: int = 1000, maxsize: float = 1e9):
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stale = sorted(self.out_dir.glob(f"{prefix}-*.tar"))
        if stale:
            raise DataError(f"{self.out_dir} already holds {prefix} shards ({stale[0].name}, ...); "
                            "remove them or choose another output directory")
        self.prefix, self.maxcount, self.maxsize = prefix, maxcount, maxsize
        self.per_shard: dict[str, int] = {}
        self.count = 0
        self._tar: tarfile.TarFile | None = None
        self._size = 0

    def write(self, sample: Sample) -> None:
        members = {"json": dumps(sample), **sample.data}
        if self._tar is None or self.per_shard[self._name] >= self.maxcount or self._size >= self.maxsize:
            self._next_shard()
        key = f"{self.count:09d}"
        for ext, data in members.items():
            info = tarfile.TarInfo(f"{key}.{ext}")
            info.size, info.mtime, info.mode = len(data), self._mtime, 0o444
            self._tar.addfile(info, io.BytesIO(data))
            self._size += len(data) + 512
        self.per_shard[self._name] += 1
        self.count += 1

    def _next_shard(self) -> None:
        if self._tar is not None:
            self._tar.close()
        self._name = f"{self.prefix}-{len(self.per_shard):06d}.tar"
        self.per_shard[self._name] = 0
        self._tar = tarfile.open(self.out_dir / self._name, "w", format=tarfile.USTAR_FORMAT)
        self._size, self._mtime = 0, int(time.time())

    def close(self) -> list[Path]:
        if self._tar is not None:
            self._tar.close()
            self._tar = None
        index = {"samples": self.count, "shards": self.per_shard}
        _atomic_write(self.out_dir / f"{self.prefix}-{INDEX_NAME}", json.dumps(index, indent=1))
        return [self.out_dir / name for name in self.per_shard]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def expand_shards(patterns: Iterable[str], field: str = "data.train") -> list[str]:
    """Brace patterns, globs and directories -> existing .tar paths. Raises DataError naming the missing one."""
    import braceexpand
    import glob

    out: list[str] = []
    for pattern in patterns:
        for p in braceexpand.braceexpand(str(pattern)):
            if os.path.isdir(p):
                found = sorted(glob.glob(os.path.join(p, "*.tar")))
            elif any(c in p for c in "*?["):
                found = sorted(glob.glob(p))
            else:
                found = [p] if os.path.isfile(p) else []
            if not found:
                raise DataError(f"{field}: no shard found at {p!r}")
            out += found
    return out


@dataclass(frozen=True)
class Ref:
    """Where one sample's members lie inside a shard: member name -> (offset, size)."""
    shard: str
    key: str
    members: tuple[tuple[str, int, int], ...]


@dataclass
class Item:
    """What a worker hands to the batcher: the sample's stream index and either its encoding or why it failed.

    `reason` is the counter the failure goes to (e.g. `bad_sample`, `no_target`, `overlong`, `bad_shard`).
    """
    index: int
    value: object = None
    error: str | None = None
    reason: str = ""


def iter_refs(shard: str) -> Iterator[Ref]:
    """Group consecutive tar members by key. A truncated or corrupt tar raises DataError naming the shard."""
    key, members = None, []
    file_size = os.path.getsize(shard)
    try:
        with tarfile.open(shard, "r:") as tf:
            for info in tf:
                if not info.isfile():
                    continue
                name = info.name
                if name.startswith("/") or ".." in Path(name).parts:
                    raise DataError(f"{shard}: member {name!r} has an absolute or '..' path; refusing it")
                k, _, member = name.partition(".")
                if k != key and key is not None:
                    yield Ref(shard, key, tuple(members))
                    members = []
                key = k
                members.append((member, info.offset_data, info.size))
                if info.offset_data + info.size > file_size:
                    raise tarfile.ReadError(f"member {name!r} runs past the end of the file")
            # tarfile stops quietly at a cut header; a complete tar ends with two zero blocks after the last member.
            tf.fileobj.seek(tf.offset)
            if tf.fileobj.read(1024) != bytes(1024):
                raise tarfile.ReadError("no end-of-archive marker")
    except (tarfile.ReadError, EOFError, OSError) as e:
        raise DataError(f"{shard}: truncated or corrupt tar after key {key!r} ({e})") from None
    if key is not None:
        yield Ref(shard, key, tuple(members))


def read_sample(ref: Ref) -> Sample:
    data = {}
    with open(ref.shard, "rb") as f:
        for member, offset, size in ref.members:
            f.seek(offset)
            data[member] = f.read(size)
    where = f"{ref.shard} key {ref.key!r}"
    if "json" not in data:
        raise DataError(f"{where}: no json member")
    try:
        obj = json.loads(data.pop("json"))
    except json.JSONDecodeError as e:
        raise DataError(f"{where}: malformed JSON ({e})") from None
    sample_id = obj.get("id", "?") if isinstance(obj, dict) else "?"
    sample = Sample.from_json(obj, data, where=f"{where} id {sample_id!r}")
    sample.origin = where
    return sample


def count_samples(shards: list[str]) -> int:
    """Samples in `shards`, from the builder's index files when present, else by walking tar headers."""
    counts: dict[str, int] = {}
    for idx in {Path(s).parent / f"{Path(s).name.rsplit('-', 1)[0]}-{INDEX_NAME}" for s in shards}:
        if idx.exists():
            for name, n in json.loads(idx.read_text())["shards"].items():
                counts[str(idx.parent / name)] = n
    return sum(counts.get(str(Path(s)), None) or sum(1 for _ in iter_refs(s)) for s in shards)
