"""MIMIC-IT (Otter) -> one Sample per instruction, its related instructions folded in as earlier turns.

Input: `XX_instructions.json`, `{"meta": ..., "data": {ins_id: {instruction, answer, image_ids: [...],
rel_ins_ids: [...]}}}`, next to its images: `XX.json`, `{image_id: base64 image}` (the first published layout), or
`XX.parquet`, image ids as the index and the base64 strings in column `base64` (the later one; read with pyarrow,
the optional extra `parquet`; XX.json wins when both are there). Every instruction
becomes a sample with id `ins_id`: first its related instructions (`rel_ins_ids`, in their order, the in-context
examples of Otter) each as a user turn and its answer, then the instruction itself and its answer. A turn starts
with one `<image>` per image id not shown in an earlier turn, in `image_ids` order: episodes whose instructions
share their images (video frames, spot-the-difference pairs) show them once, in-context examples with images of
their own each show theirs. Images are stored as their decoded original bytes, and must decode with PIL.

The instruction file is read whole (it holds text only); the image file, often many gigabytes, is not: XX.json is
indexed by byte offset with mmap, XX.parquet by row group and row from its id column alone, and each image decoded
when a sample needs it (a parquet row group's base64 column is read when one of its images is first needed, and
kept until another group's is). Not read: `XX_train.json` (the in-context pairs, which repeat `rel_ins_ids`).
"""
from __future__ import annotations

import base64
import binascii
import json
import mmap
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from data_builders.common import (CORRUPT_MEDIA, MISSING_FIELD, MISSING_MEDIA, WRONG_TYPE, Context, Where,
                                  as_object, optional, require)
from data_builders.records import Record
from data_builders.samples import MediaRef, make_sample
from mmtune.data.sample import Message, Sample
from mmtune.errors import DataError

SUFFIX = "_instructions"
_KEY = rb'\s*"((?:[^"\\]|\\.)*)"\s*:\s*"'
_FIRST_KEY, _NEXT_KEY = re.compile(rb"\s*\{" + _KEY), re.compile(rb"\s*," + _KEY)
_EMPTY, _END = re.compile(rb"\s*\{\s*}\s*$"), re.compile(rb"\s*}\s*$")


class ImageIndex:
    """`{image_id: base64}` JSON read through mmap: the offsets of every value, decoded one image at a time."""

    def __init__(self, path: Path):
        self.path = path
        with open(path, "rb") as f:
            self.map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ) if path.stat().st_size else b""
        self.spans: dict[str, tuple[int, int]] = {}
        pos = 0
        while match := (_NEXT_KEY if self.spans else _FIRST_KEY).match(self.map, pos):
            end = self.map.find(b'"', match.end())
            if end < 0:
                raise DataError(f"{path}: unterminated image string at byte {match.end()}")
            self.spans[self._key(match)] = (match.end(), end)
            pos = end + 1
        if not (_END if self.spans else _EMPTY).match(self.map, pos):
            raise DataError(f"{path}: expected a JSON object of image id -> base64 string, malformed at byte {pos}")

    def _key(self, match: re.Match) -> str:
        try:
            return json.loads(b'"' + match.group(1) + b'"')
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"{self.path}: malformed image id at byte {match.start(1)} ({e})") from None

    def image(self, image_id: str, where: Where, field: str) -> bytes:
        if image_id not in self.spans:
            raise where.error(field, f"image id {image_id!r} is not in {self.path}", MISSING_MEDIA)
        start, end = self.spans[image_id]
        return _from_base64(self.map[start:end], image_id, self.path, where, field)


class ParquetImages:
    """`XX.parquet`: image ids as the index (pandas' `to_parquet` of `{image_id: base64}`) or as the one column
    besides `base64`, read through pyarrow one row group at a time."""

    COLUMN = "base64"

    def __init__(self, path: Path):
        try:
            import pyarrow.parquet as pq
        except ImportError:
            raise DataError(f"{path}: MIMIC-IT parquet images need pyarrow (pip install 'mmtune[parquet]'); or "
                            f"give the images as {path.stem}.json") from None
        self.path = path
        try:
            self.file = pq.ParquetFile(path)
            id_column = self._id_column()
            self.rows: dict[str, tuple[int, int]] = {}
            for group in range(self.file.num_row_groups):
                ids = self.file.read_row_group(group, columns=[id_column]).column(0).to_pylist()
                self._index(group, ids, id_column)
        except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid and ArrowIOError are both
            raise DataError(f"{path}: not a readable parquet file ({e})") from None
        self.group: tuple[int, Any] = (-1, None)

    def _id_column(self) -> str:
        """The pandas index column when the file says so, else the one column besides `base64`."""
        schema = self.file.schema_arrow
        names = schema.names
        pandas = json.loads((schema.metadata or {}).get(b"pandas", b"{}"))
        named = [c for c in pandas.get("index_columns", []) if isinstance(c, str)]  # a RangeIndex is a dict
        others = named or [n for n in names if n != self.COLUMN]
        if self.COLUMN not in names or len(others) != 1:
            raise DataError(f"{self.path}: expected image ids (the index, or one column) and a column "
                            f"{self.COLUMN!r} of base64 images; found columns {names}")
        return others[0]

    def _index(self, group: int, ids: list, id_column: str) -> None:
        for row, image_id in enumerate(ids):
            where = f"{self.path}: row group {group} row {row} column {id_column!r}"
            if not isinstance(image_id, str):
                raise DataError(f"{where}: image id {image_id!r} is not a string")
            if image_id in self.rows:
                raise DataError(f"{where}: image id {image_id!r} appears twice")
            self.rows[image_id] = (group, row)

    def image(self, image_id: str, where: Where, field: str) -> bytes:
        if image_id not in self.rows:
            raise where.error(field, f"image id {image_id!r} is not in {self.path}", MISSING_MEDIA)
        group, row = self.rows[image_id]
        if self.group[0] != group:
            self.group = (group, self.file.read_row_group(group, columns=[self.COLUMN]).column(0))
        value = self.group[1][row].as_py()
        if not isinstance(value, (str, bytes)):
            raise where.error(field, f"image {image_id!r} in {self.path} is {value!r}, not a base64 string",
                              CORRUPT_MEDIA)
        return _from_base64(value, image_id, self.path, where, field)


def _from_base64(value: bytes | str, image_id: str, path: Path, where: Where, field: str) -> bytes:
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as e:  # ValueError: a str with characters outside ASCII
        raise where.error(field, f"image {image_id!r} in {path} is not valid base64 ({e})", CORRUPT_MEDIA) from None


@dataclass(frozen=True)
class Episode:
    """One instruction of the file, with the whole `data` object to look its related instructions up in."""
    ins_id: str
    instructions: dict
    images: ImageIndex | ParquetImages


def read_episodes(path: Path) -> Iterator[Record]:
    """One record per instruction of `path`, in file order, with its line; the images come from the `XX.json` or
    `XX.parquet` beside it."""
    stem = path.name.removesuffix(".json")
    if not stem.endswith(SUFFIX):
        raise DataError(f"{path}: a MIMIC-IT instruction file is named XX{SUFFIX}.json (its images are XX.json)")
    images = _images(path, stem.removesuffix(SUFFIX))
    text = path.read_text(encoding="utf-8-sig")
    try:
        data = json.loads(text).get("data")
    except (json.JSONDecodeError, AttributeError) as e:
        raise DataError(f"{path}: expected a JSON object with a `data` object ({e})") from None
    if not isinstance(data, dict):
        raise DataError(f"{path}: field data: expected an object of instruction id -> instruction")
    line, pos = 1, 0
    for number, ins_id in enumerate(data):
        if found := re.compile(re.escape(json.dumps(ins_id)) + r"\s*:").search(text, pos):
            line, pos = line + text.count("\n", pos, found.start()), found.start()
        yield Record(number, line, Episode(ins_id, data, images))


def _images(path: Path, name: str) -> ImageIndex | ParquetImages:
    as_json, as_parquet = path.with_name(f"{name}.json"), path.with_name(f"{name}.parquet")
    if as_json.is_file():
        return ImageIndex(as_json)
    if as_parquet.is_file():
        return ParquetImages(as_parquet)
    raise DataError(f"{path}: its images file {as_json} (or {as_parquet.name}) not found (MIMIC-IT stores them as "
                    f"{{image_id: base64}})")


def convert(value: Any, where: Where, ctx: Context) -> list[Sample]:
    episode: Episode = value
    where = where.with_id(episode.ins_id)
    entry = as_object(episode.instructions[episode.ins_id], where)
    related = _strings(entry, "rel_ins_ids", where, "rel_ins_ids")
    messages, media, shown = [], [], set()
    for i, ins_id in enumerate(r for r in related if r != episode.ins_id):
        if ins_id not in episode.instructions:
            raise where.error(f"rel_ins_ids[{i}]", f"related instruction {ins_id!r} is not in data", MISSING_FIELD)
        _add_turn(episode, as_object(episode.instructions[ins_id], where), f"data.{ins_id}.", where, messages, media,
                  shown)
    _add_turn(episode, entry, "", where, messages, media, shown)
    return [make_sample(where, ctx, messages, media, field="instruction")]


def _add_turn(episode: Episode, entry: dict, prefix: str, where: Where, messages: list[Message],
              media: list[MediaRef], shown: set[str]) -> None:
    """Append one instruction's user turn (its new images first) and answer; `prefix` names a related entry."""
    instruction = require(entry, "instruction", str, where, f"{prefix}instruction")
    answer = require(entry, "answer", str, where, f"{prefix}answer")
    new = []
    for j, image_id in enumerate(_strings(entry, "image_ids", where, f"{prefix}image_ids")):
        if image_id not in shown:
            shown.add(image_id)
            field = f"{prefix}image_ids[{j}]"
            new.append(MediaRef("image", image_id, field, data=episode.images.image(image_id, where, field)))
    media.extend(new)
    messages += [Message("user", "<image>\n" * len(new) + instruction), Message("assistant", answer)]


def _strings(entry: dict, key: str, where: Where, name: str) -> list[str]:
    values = optional(entry, key, list, where, default=[], name=name)
    for i, v in enumerate(values):
        if not isinstance(v, str):
            raise where.error(f"{name}[{i}]", f"expected an id string, got {type(v).__name__}", WRONG_TYPE)
    return values
