"""Role/content chats with several media files (LLaMA-Factory's mllm format) -> one Sample per record.

Record: `{messages: [{role, content}, ...], images?: [path, ...], videos?: [path, ...]}`, paths relative to the
media folder (default: the JSON file's folder). `<image>` and `<video>` may appear anywhere in any turn; the
n-th `<image>` takes the n-th path of `images` and likewise for videos, and the sample's media follow the order
of the placeholders in the text. A text-only record (no media lists) is an OpenAI-style chat.
"""
from __future__ import annotations

from typing import Any

from data_builders.common import PLACEHOLDER_MISMATCH, WRONG_TYPE, Context, Where, as_object, optional, require
from data_builders.samples import MediaRef, make_sample
from data_builders.sharegpt import parse_turns
from mmtune.data.sample import Message, Sample, count_placeholders

MEDIA_FIELDS = {"image": "images", "video": "videos"}
"""Placeholder kind -> the record field listing its paths."""


def convert(value: Any, where: Where, ctx: Context) -> list[Sample]:
    record = as_object(value, where)
    where = where.with_id(record.get("id"))
    messages = parse_turns(require(record, "messages", list, where), where, "messages", "role", "content")
    paths = {kind: _paths(record, key, where) for kind, key in MEDIA_FIELDS.items()}
    return [make_sample(where, ctx, messages, _in_placeholder_order(messages, paths, where))]


def _paths(record: dict, key: str, where: Where) -> list[str]:
    paths = optional(record, key, list, where, default=[])
    for i, p in enumerate(paths):
        if not isinstance(p, str):
            raise where.error(f"{key}[{i}]", f"expected a path string, got {type(p).__name__}", WRONG_TYPE)
    return paths


def _in_placeholder_order(messages: list[Message], paths: dict[str, list[str]], where: Where) -> list[MediaRef]:
    """Pair every placeholder with the next path of its kind; the counts of each kind must agree."""
    kinds = [kind for m in messages for kind in count_placeholders(m.content)]
    for kind in sorted(set(kinds) | {k for k, v in paths.items() if v}):
        if kind not in MEDIA_FIELDS:
            raise where.error("messages", f"<{kind}> placeholders are not part of this format (it has "
                                          f"{', '.join(MEDIA_FIELDS.values())})", PLACEHOLDER_MISMATCH)
        key = MEDIA_FIELDS[kind]
        if kinds.count(kind) != len(paths[kind]):
            raise where.error(key, f"{kinds.count(kind)} <{kind}> placeholder(s) in messages but "
                                   f"{len(paths[kind])} path(s) in {key}", PLACEHOLDER_MISMATCH)
    queues = {kind: iter(enumerate(paths[kind])) for kind in paths}
    refs = []
    for kind in kinds:
        j, path = next(queues[kind])
        refs.append(MediaRef(kind, path, f"{MEDIA_FIELDS[kind]}[{j}]"))
    return refs
