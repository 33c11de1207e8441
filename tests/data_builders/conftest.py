"""Fixtures for the builder tests: write input files, build them, and read the shards back the way training does."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Callable

import pytest
from PIL import Image

from data_builders import BuildReport, build
from mmtune.data.sample import Sample
from mmtune.data.stream import ShardStream


@pytest.fixture
def write_json(tmp_path: Path) -> Callable[..., Path]:
    """write_json(name, records, lines=False): a JSON array (or JSON Lines) file in tmp_path."""
    def write(name: str, records: list[Any], lines: bool = False) -> Path:
        path = tmp_path / name
        if lines:
            path.write_text("".join(json.dumps(r) + "\n" for r in records))
        else:
            path.write_text(json.dumps(records, indent=1, ensure_ascii=False))
        return path
    return write


@pytest.fixture
def image_file(tmp_path: Path) -> Callable[..., Path]:
    """image_file(name, fmt="PNG"): a small real image in tmp_path."""
    def make(name: str, fmt: str = "PNG") -> Path:
        path = tmp_path / name
        Image.new("RGB", (8, 6), (200, 30, 90)).save(path, format=fmt)
        return path
    return make


def _read(out_dir: Path, prefix: str = "train") -> list[Sample]:
    shards = [str(p) for p in sorted(out_dir.glob(f"{prefix}-*.tar"))]
    items = list(ShardStream(shards, transform=lambda s: s, shuffle=False))
    assert [i.error for i in items if i.error] == []
    return [i.value for i in items]


@pytest.fixture
def read_shards() -> Callable[..., list[Sample]]:
    """read_shards(out_dir, prefix="train"): the samples of those shards, in order, as training reads them."""
    return _read


@pytest.fixture
def build_read(tmp_path: Path) -> Callable[..., tuple[BuildReport, list[Sample]]]:
    """build_read(name, input, **kw): build into a fresh folder, return the report and the train samples."""
    count = 0

    def run(name: str, input_path: Path, **kwargs) -> tuple[BuildReport, list[Sample]]:
        nonlocal count
        count += 1
        out = tmp_path / f"out{count}"
        report = build(name, input_path, out, **kwargs)
        return report, _read(out)
    return run

