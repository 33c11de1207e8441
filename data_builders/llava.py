"""LLaVA's format -> one Sample per record: `{id, image?, conversations: [{from: human|gpt, value}, ...]}`.

`image` is a path relative to the image folder (default: the JSON file's folder); records without it are
text-only. `<image>` may stand before or after the text of a turn and is kept where it is. A record that has an
image but no placeholder gets `"<image>\\n"` prepended to its first user turn, which is what LLaVA's
own loader assumes; any other count mismatch is an error naming the record.
"""
from __future__ import annotations

from typing import Any

from data_builders.common import Context, Where, as_object, optional, require
from data_builders.samples import MediaRef, make_sample
from data_builders.sharegpt import parse_turns
from mmtune.data.sample import Message, Sample, count_placeholders


def convert(value: Any, where: Where, ctx: Context) -> list[Sample]:
    record = as_object(value, where)
    where = where.with_id(record.get("id"))
    messages = parse_turns(require(record, "conversations", list, where), where, "conversations")
    image = optional(record, "image", str, where)
    media = [MediaRef("image", image, "image")] if image else []
    return [make_sample(where, ctx, with_placeholders(messages, media), media, field="conversations")]


def with_placeholders(messages: list[Message], media: list[MediaRef]) -> list[Message]:
    """When no turn holds a placeholder, one per media item (in order) is put at the start of the first user turn,
    as LLaVA's own loader assumes; messages that already place their media, or have no user turn, are unchanged."""
    if not media or any(count_placeholders(m.content) for m in messages):
        return messages
    prefix = "".join(f"<{ref.kind}>\n" for ref in media)
    for i, m in enumerate(messages):
        if m.role == "user":
            return messages[:i] + [Message("user", prefix + m.content)] + messages[i + 1:]
    return messages
