"""What every builder shares: where a record came from, errors that name it, and typed field access.

Every error a builder raises is a RecordError: a DataError whose message reads
`FILE record N (line L) id 'X' field F: what is wrong`, and whose `reason` is the category that
`--on-error skip` counts. Record numbers count from 0 (the index in a JSON array), lines from 1.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from mmtune.errors import DataError

MALFORMED_JSON = "malformed_json"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
UNKNOWN_ROLE = "unknown_role"
EMPTY_CONVERSATION = "empty_conversation"
NO_ASSISTANT_REPLY = "no_assistant_reply"
MISSING_MEDIA = "missing_media"
MEDIA_OUTSIDE = "media_outside_folder"
CORRUPT_MEDIA = "corrupt_media"
PLACEHOLDER_MISMATCH = "placeholder_mismatch"
INVALID_SAMPLE = "invalid_sample"
"""Anything mmtune.data.sample.validate rejects that a builder did not check first (e.g. a system turn later on)."""

_TYPE_NAMES = {str: "a string", list: "a list", dict: "an object", int: "an integer", float: "a number",
               bool: "a boolean"}
Kind = type | tuple[type, ...]


class RecordError(DataError):
    """A record the builder cannot convert; `reason` is the category counted when records are skipped."""

    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class Where:
    """The position of one record in its source file, used as the prefix of every error about it."""
    file: Path
    record: int
    line: int
    id: str | None = None

    def __str__(self) -> str:
        text = f"{self.file} record {self.record} (line {self.line})"
        return text + (f" id {self.id!r}" if self.id is not None else "")

    def with_id(self, record_id: Any) -> "Where":
        return self if record_id is None else replace(self, id=str(record_id))

    def error(self, field: str | None, message: str, reason: str) -> RecordError:
        return RecordError(f"{self}{f' field {field}' if field else ''}: {message}", reason)


@dataclass(frozen=True)
class Context:
    """What a builder needs besides the record: the sample source name, the folder media paths are relative to,
    and whether media may lie outside that folder (only for trusted data)."""
    source: str
    media_root: Path
    allow_outside_media: bool = False


def media_path(ctx: Context, relative: str, where: Where, field: str) -> Path:
    """The file a record's media path names, with symlinks resolved. Unless `ctx.allow_outside_media`, a path that
    resolves outside the media folder (`..`, an absolute path, a symlink leading out) raises: a data set from the
    internet could otherwise pull any readable file of this machine into shards that are later shared."""
    path = (ctx.media_root / relative).resolve()
    root = ctx.media_root.resolve()
    if not ctx.allow_outside_media and not path.is_relative_to(root):
        raise where.error(field, f"media path {relative!r} is outside the image folder {root} (it resolves to "
                                 f"{path}); pass --allow-outside-media for trusted data stored elsewhere",
                          MEDIA_OUTSIDE)
    return path


def as_object(value: Any, where: Where) -> dict:
    if not isinstance(value, dict):
        raise where.error(None, f"expected a JSON object, got {type(value).__name__}", WRONG_TYPE)
    return value


def require(obj: dict, key: str, kind: Kind, where: Where, name: str | None = None) -> Any:
    """`obj[key]`, which must be present (not null) and of type `kind`. `name` is the dotted field (default `key`)."""
    if obj.get(key) is None:
        raise where.error(name or key, "missing", MISSING_FIELD)
    return _typed(obj[key], kind, where, name or key)


def optional(obj: dict, key: str, kind: Kind, where: Where, default: Any = None, name: str | None = None) -> Any:
    """`obj[key]` when present and not null (then it must be of type `kind`), else `default`."""
    value = obj.get(key)
    return default if value is None else _typed(value, kind, where, name or key)


def _typed(value: Any, kind: Kind, where: Where, name: str) -> Any:
    if not isinstance(value, kind):
        expected = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in (kind if isinstance(kind, tuple) else (kind,)))
        raise where.error(name, f"expected {expected}, got {type(value).__name__}", WRONG_TYPE)
    return value


def map_role(value: str, table: dict[str, str], where: Where, name: str) -> str:
    """The canonical role for a source role name; unknown names raise listing the accepted ones."""
    if value not in table:
        raise where.error(name, f"unknown role {value!r}, expected one of {sorted(table)}", UNKNOWN_ROLE)
    return table[value]
