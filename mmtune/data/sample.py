"""The canonical sample every builder writes and every recipe reads (see docs/architecture.md).

A sample is messages plus media; the placeholders `<image>`, `<video>`, `<points>` in message contents must match
the `media` list in count and order. `validate` enforces that at build time and again at load time. A sample
learns from its assistant turns, or, as an edit triplet (input image, instruction, edited image), from `target`:
then the user turn holds the input image's placeholder and the instruction, and no assistant turn is needed.
"""
from __future__ import annotations

import json
import re
from dataclasses import asdict, dataclass, field
from typing import Literal

from mmtune.config import MEDIA_KINDS
from mmtune.errors import DataError

ROLES = ("system", "user", "assistant")
PLACEHOLDERS = {f"<{kind}>": kind for kind in MEDIA_KINDS}
PLACEHOLDER_RE = re.compile("|".join(re.escape(p) for p in PLACEHOLDERS))


@dataclass(frozen=True)
class Message:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class Media:
    kind: Literal["image", "video", "points"]
    member: str
    """Name of the tar member holding the original bytes, e.g. `0.jpg`."""


@dataclass
class Sample:
    id: str
    messages: list[Message]
    source: str = ""
    task: str = ""
    media: list[Media] = field(default_factory=list)
    target: Media | None = None
    data: dict[str, bytes] = field(default_factory=dict, repr=False)
    """Member name -> bytes for every media item (not part of the JSON)."""
    origin: str = ""
    """Where it was read from (shard path and tar key; not part of the JSON), so later errors can name the file."""

    @property
    def where(self) -> str:
        """How errors name this sample: its shard and key when read from one, its id and source always."""
        place = f"{self.origin} " if self.origin else ""
        return f"{place}sample {self.id!r} ({self.source or 'unknown source'})"

    def to_json(self) -> dict:
        out = {"id": self.id, "source": self.source, "task": self.task,
               "messages": [asdict(m) for m in self.messages], "media": [asdict(m) for m in self.media]}
        if self.target is not None:
            out["target"] = asdict(self.target)
        return out

    @classmethod
    def from_json(cls, obj: dict, data: dict[str, bytes] | None = None, where: str = "") -> "Sample":
        """Parse the `json` member of a shard sample; errors name `where` (shard and key) and the field."""
        where = where or f"sample {obj.get('id', '?')!r}"
        if not isinstance(obj, dict):
            raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
        try:
            messages = [Message(m["role"], m["content"]) for m in obj["messages"]]
            media = [Media(m["kind"], m["member"]) for m in obj.get("media", [])]
            target = Media(**obj["target"]) if obj.get("target") else None
        except (KeyError, TypeError) as e:
            raise DataError(f"{where}: malformed sample JSON, missing or wrong field {e}") from None
        sample = cls(id=str(obj.get("id", "")), messages=messages, source=obj.get("source", ""),
                     task=obj.get("task", ""), media=media, target=target, data=data or {})
        validate(sample, where)
        return sample


def count_placeholders(text: str) -> list[str]:
    """Media kinds of the placeholders in `text`, in order."""
    return [PLACEHOLDERS[m] for m in PLACEHOLDER_RE.findall(text)]


def media_instructions(messages: list[Message]) -> list[tuple[str, str]]:
    """(kind, instruction) for each placeholder, in order: the text of the turn the placeholder sits in, with
    placeholders removed. An instruction-aware bridge (InstructBLIP's Q-Former) reads it with that item."""
    return [(kind, " ".join(PLACEHOLDER_RE.sub(" ", m.content).split()))
            for m in messages for kind in count_placeholders(m.content)]


def validate(sample: Sample, where: str = "") -> None:
    """Raise DataError unless roles, contents and placeholders/media agree. `where` prefixes the message."""
    where = where or f"sample {sample.id!r}"
    if not sample.messages:
        raise DataError(f"{where}: field messages: empty conversation")
    kinds: list[str] = []
    for i, m in enumerate(sample.messages):
        if m.role not in ROLES:
            raise DataError(f"{where}: field messages[{i}].role: unknown role {m.role!r}, expected one of {ROLES}")
        if not isinstance(m.content, str):
            raise DataError(f"{where}: field messages[{i}].content: expected a string, got {type(m.content).__name__}")
        if m.role == "system" and i != 0:
            raise DataError(f"{where}: field messages[{i}].role: a system message may only come first")
        kinds += count_placeholders(m.content)
    if sample.target is None and not any(m.role == "assistant" for m in sample.messages):
        raise DataError(f"{where}: field messages: no assistant turn (and no target) to learn from")
    if sample.target is not None and sample.target.kind != "image":
        raise DataError(f"{where}: field target.kind: an edit target must be an image, got {sample.target.kind!r}")
    media_kinds = [m.kind for m in sample.media]
    for j, m in enumerate(sample.media):
        if m.kind not in MEDIA_KINDS:
            raise DataError(f"{where}: field media[{j}].kind: unknown kind {m.kind!r}, expected one of {MEDIA_KINDS}")
    if kinds != media_kinds:
        raise DataError(f"{where}: field messages: placeholders {_summary(kinds)} do not match media {_summary(media_kinds)}")
    if sample.data:
        needed = [m.member for m in sample.media] + ([sample.target.member] if sample.target else [])
        missing = [n for n in needed if n not in sample.data]
        if missing:
            raise DataError(f"{where}: field media: member(s) {missing} not present in the sample")


def _summary(kinds: list[str]) -> str:
    return "[" + ", ".join(f"<{k}>" for k in kinds) + "]" if kinds else "[] (none)"


def dumps(sample: Sample) -> bytes:
    return json.dumps(sample.to_json(), ensure_ascii=False).encode()
