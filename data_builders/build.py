"""The build loop every builder shares: stream records, convert and validate each, split train/eval, write shards.

A builder is `Builder(convert, read)`: `read(path)` streams Records and `convert(value, where, ctx, **options)`
turns one record into samples or raises RecordError naming the field. A record's samples all go to one split,
chosen from (seed, record number) alone, so a rebuild with the same seed gives the same split. With
`on_error="skip"` a bad record is left out and counted by reason; malformed JSON inside a JSON array still raises,
since nothing after it can be read. Shards are written to a staging folder inside `out_dir` and moved in only when
the build succeeds, so a failed build leaves no partial shards behind.
"""
from __future__ import annotations

import functools
import inspect
import os
import random
import shutil
import tempfile
import time
from collections import Counter
from contextlib import contextmanager
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import Callable, Iterator

from tqdm import tqdm

from data_builders.common import INVALID_SAMPLE, Context, Where
from data_builders.records import Record, read_records
from mmtune.data.sample import Sample
from mmtune.errors import ConfigError, DataError

ON_ERROR = ("raise", "skip")


@dataclass(frozen=True)
class Builder:
    """One source format: how to stream its records and how to convert one record into samples."""
    convert: Callable[..., list[Sample]]
    read: Callable[[Path], Iterator[Record]] = read_records

    def options(self) -> list[str]:
        """The keyword-only options `convert` takes (e.g. oasst's `all_paths`)."""
        return [p.name for p in inspect.signature(self.convert).parameters.values() if p.kind is p.KEYWORD_ONLY]


@dataclass
class BuildReport:
    """What a build did: counts per split, skipped records per reason (with the first message of each), shards."""
    builder: str
    input: Path
    out_dir: Path
    records: int = 0
    train: int = 0
    eval: int = 0
    skipped: Counter = field(default_factory=Counter)
    first_errors: dict[str, str] = field(default_factory=dict)
    shards: list[Path] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        return (f"{self.builder}: {self.records} records -> {self.train} train + {self.eval} eval samples, "
                f"{sum(self.skipped.values())} records skipped, {len(self.shards)} shards in {self.out_dir} "
                f"({self.seconds:.1f}s)")

    def skip_lines(self) -> list[str]:
        return [f"skipped {n} record(s) for {reason}; first: {self.first_errors[reason]}"
                for reason, n in self.skipped.most_common()]


def build(name: str, input_path: str | Path, out_dir: str | Path, *, image_folder: str | Path | None = None,
          on_error: str = "raise", eval_fraction: float = 0.0, seed: int = 0, shard_size: int = 1000,
          limit: int | None = None, allow_outside_media: bool = False, progress: bool = False,
          **builder_options) -> BuildReport:
    """Convert `input_path` with BUILDERS[name] into `out_dir/train-*.tar` (and `eval-*.tar` when
    eval_fraction > 0), each with its index. Media paths are relative to `image_folder` (default: the input's
    folder) and must stay inside it unless `allow_outside_media`; `limit` stops after that many records. Raises DataError naming file, record and field (unless
    on_error="skip") or when `out_dir` already holds shards, ConfigError for a bad argument.
    """
    from data_builders import BUILDERS  # the registry imports this module, so look it up at call time
    from mmtune.data.shards import ShardSink

    convert = _bind(BUILDERS, name, builder_options)
    input_path, out_dir = Path(input_path), Path(out_dir)
    _check(input_path, out_dir, image_folder, on_error, eval_fraction, shard_size, limit)
    ctx = Context(_source_name(input_path), Path(image_folder) if image_folder else input_path.parent,
                  allow_outside_media)
    report = BuildReport(name, input_path, out_dir)
    start = time.perf_counter()
    with _staging(out_dir) as staging:
        sinks = {"train": ShardSink(staging, "train", maxcount=shard_size)}
        if eval_fraction > 0:
            sinks["eval"] = ShardSink(staging, "eval", maxcount=shard_size)
        try:
            records = islice(BUILDERS[name].read(input_path), limit)
            for record in tqdm(records, desc=f"build-data {name}", unit=" records", disable=not progress):
                report.records += 1
                samples = _convert(record, convert, input_path, ctx, on_error, report)
                sink = sinks["eval"] if _is_eval(seed, record.number, eval_fraction) else sinks["train"]
                for sample in samples:
                    sink.write(sample)
        finally:
            shards = [shard for sink in sinks.values() for shard in sink.close()]
        report.train, report.eval = sinks["train"].count, sinks["eval"].count if "eval" in sinks else 0
        if report.train + report.eval == 0:
            raise DataError(f"{input_path}: no sample written from {report.records} record(s)"
                            + "".join(f"; {line}" for line in report.skip_lines()))
    report.shards = [out_dir / shard.name for shard in shards]
    report.seconds = time.perf_counter() - start
    return report


def _bind(builders: dict[str, Builder], name: str, options: dict) -> Callable[..., list[Sample]]:
    if name not in builders:
        raise ConfigError(f"unknown builder {name!r}; choose one of {sorted(builders)}")
    accepted = builders[name].options()
    for key in options:
        if key not in accepted:
            raise ConfigError(f"builder {name!r} has no option {key!r} (its options: {accepted or 'none'})")
    return functools.partial(builders[name].convert, **options)


def _check(input_path: Path, out_dir: Path, image_folder: str | Path | None, on_error: str, eval_fraction: float,
           shard_size: int, limit: int | None) -> None:
    if on_error not in ON_ERROR:
        raise ConfigError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    if not 0 <= eval_fraction < 1:
        raise ConfigError(f"eval_fraction must be in [0, 1), got {eval_fraction}")
    if shard_size < 1 or (limit is not None and limit < 1):
        raise ConfigError(f"shard_size and limit must be >= 1, got {shard_size} and {limit}")
    if not input_path.is_file():
        raise DataError(f"input file {input_path} not found")
    if image_folder is not None and not Path(image_folder).is_dir():
        raise DataError(f"image folder {image_folder} not found")
    existing = sorted(p.name for pattern in ("train-*", "eval-*") for p in out_dir.glob(pattern))
    if existing:
        raise DataError(f"{out_dir} already holds shards ({', '.join(existing[:3])}"
                          f"{', ...' if len(existing) > 3 else ''}); remove them or build into another folder")


def _convert(record: Record, convert: Callable[..., list[Sample]], input_path: Path, ctx: Context, on_error: str,
             report: BuildReport) -> list[Sample]:
    """The record's samples, or [] when it is skipped (counted in `report`)."""
    try:
        if record.error is not None:
            raise record.error
        return convert(record.value, Where(input_path, record.number, record.line), ctx)
    except DataError as e:
        if on_error == "raise":
            raise
        reason = getattr(e, "reason", INVALID_SAMPLE)
        report.skipped[reason] += 1
        report.first_errors.setdefault(reason, str(e))
        return []


def _is_eval(seed: int, record: int, fraction: float) -> bool:
    return fraction > 0 and random.Random(f"{seed}-{record}").random() < fraction


def _source_name(path: Path) -> str:
    name = path.name
    for suffix in (".gz", ".jsonl", ".json"):
        name = name.removesuffix(suffix)
    return name


@contextmanager
def _staging(out_dir: Path) -> Iterator[Path]:
    """A temporary folder inside `out_dir` whose files move into `out_dir` only if the block succeeds."""
    out_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=".build-", dir=out_dir))
    try:
        yield staging
        for path in sorted(staging.iterdir()):
            os.replace(path, out_dir / path.name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
