"""WebDataset shards: writing with webdataset's ShardWriter, and a streaming, resumable, rank/worker-aware reader.

Reading is our own because no library fit (see docs/architecture.md, "Data state"): the reader walks tar headers
(cheap: data is seeked over) in an order fixed by (seed, epoch), so every rank and worker sees the same sequence of
sample references and decodes only its own. That makes the position a single integer per rank and resume exact.
Memory is bounded by the shuffle buffer, never by the data set size.
"""
from __future__ import annotations

import json
import os
import random
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from mmtune.data.sample import Sample, dumps
from mmtune.errors import DataError

INDEX_NAME = "index.json"


class ShardSink:
    """Write samples to `out_dir/{prefix}-000000.tar` ... and `{prefix}-index.json` with per-shard counts.

    Keys are sequence numbers (ids may hold dots or slashes, which tar keys cannot); the id lives in the JSON.
    Only the shards this sink wrote are indexed, and a prefix that already has shards in `out_dir` is refused,
    so a rebuild never mixes old and new shards.
    """

    def __init__(self, out_dir: str | Path, prefix: str = "data", maxcount: int = 1000, maxsize: float = 1e9):
        import webdataset as wds

        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        stale = sorted(self.out_dir.glob(f"{prefix}-*.tar"))
        if stale:
            raise DataError(f"{self.out_dir} already holds {prefix} shards ({stale[0].name}, ...); "
                            "remove them or choose another output directory")
        self.prefix = prefix
        self.per_shard: dict[str, int] = {}
        self._writer = wds.ShardWriter(str(self.out_dir / f"{prefix}-%06d.tar"), maxcount=maxcount,
                                       maxsize=maxsize, verbose=0)
        self.count = 0

    def write(self, sample: Sample) -> None:
        record = {"__key__": f"{self.count:09d}", "json": dumps(sample)}
        record.update(sample.data)
        self._writer.write(record)
        name = Path(self._writer.fname).name
        self.per_shard[name] = self.per_shard.get(name, 0) + 1
        self.count += 1

    def close(self) -> list[Path]:
        """Finish the last shard, drop the empty one webdataset opens eagerly, write the index."""
        self._writer.close()
        for path in self.out_dir.glob(f"{self.prefix}-*.tar"):
            if path.name not in self.per_shard:
                path.unlink()
        shards = [self.out_dir / name for name in self.per_shard]
        index = {"samples": self.count, "shards": self.per_shard}
        _atomic_write(self.out_dir / f"{self.prefix}-{INDEX_NAME}", json.dumps(index, indent=1))
        return shards

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
    return Sample.from_json(obj, data, where=f"{where} id {obj.get('id', '?')!r}")


class ShardStream(torch.utils.data.IterableDataset):
    """Deterministic stream of `(local index, transform(sample))` for one rank, split across DataLoader workers.

    Global order: shards shuffled per epoch, then a seeded shuffle buffer of refs. Rank r owns global positions
    i with i % world == r; its local index is i // world, and worker w owns local indices j with
    (j - start) % num_workers == w, so the DataLoader's round-robin over workers yields local indices in order.
    One epoch only; the loader builds a new stream per epoch. Failed samples come back as Items with `error`
    (never dropped), so the order stays intact and the batcher counts or raises.
    """

    def __init__(self, shards: list[str], transform: Callable[[Sample], object], *, epoch: int = 0, seed: int = 0,
                 shuffle: bool = True, shuffle_buffer: int = 1000, rank: int = 0, world: int = 1, start: int = 0):
        super().__init__()
        self.shards, self.transform = list(shards), transform
        self.epoch, self.seed, self.shuffle, self.shuffle_buffer = epoch, seed, shuffle, shuffle_buffer
        self.rank, self.world, self.start = rank, world, start

    def refs(self) -> Iterator[Ref | DataError]:
        rng = random.Random(f"{self.seed}-{self.epoch}")
        shards = list(self.shards)
        if self.shuffle:
            rng.shuffle(shards)
        buffer: list[Ref] = []
        for shard in shards:
            try:
                for ref in iter_refs(shard):
                    if not self.shuffle or self.shuffle_buffer <= 1:
                        yield ref
                        continue
                    buffer.append(ref)
                    if len(buffer) >= self.shuffle_buffer:
                        yield buffer.pop(rng.randrange(len(buffer)))
            except DataError as e:
                yield e  # a truncated shard: the batcher raises or counts it; the refs before it still count
        rng.shuffle(buffer)
        yield from buffer

    def __iter__(self) -> Iterator[Item]:
        info = torch.utils.data.get_worker_info()
        wid, nw = (info.id, info.num_workers) if info else (0, 1)
        for i, ref in enumerate(self.refs()):  # a shard error takes a position too, so exactly one worker reports it
            if i % self.world != self.rank:
                continue
            local = i // self.world
            if local < self.start or (local - self.start) % nw != wid:
                continue
            if isinstance(ref, DataError):
                yield Item(local, error=str(ref), reason="bad_shard")
                continue
            try:
                yield Item(local, value=self.transform(read_sample(ref)))
            except DataError as e:
                yield Item(local, error=str(e), reason=getattr(e, "reason", "bad_sample"))


def count_samples(shards: list[str]) -> int:
    """Samples in `shards`, from the builder's index files when present, else by walking tar headers."""
    counts: dict[str, int] = {}
    for idx in {Path(s).parent / f"{Path(s).name.rsplit('-', 1)[0]}-{INDEX_NAME}" for s in shards}:
        if idx.exists():
            for name, n in json.loads(idx.read_text())["shards"].items():
                counts[str(idx.parent / name)] = n
    return sum(counts.get(str(Path(s)), None) or sum(1 for _ in iter_refs(s)) for s in shards)
