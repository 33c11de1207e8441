"""LLaVA's format -> one Sample per record: `{id, image?, conversations: [{from: human|gpt, value}, ...]}`.

`image` is a path relative to the image folder (default: the JSON file's folder); records without it are
text-only. `<image>` may stand before or after the text of a turn and is kept where it is. A record that has an
image but no `<image>` placeholder gets `"<image>\\n"` prepended to its first user turn, which is what LLaVA's
own loader assumes; any other count mismatch is an error naming the record.
"""
from __future__ import annotations

from typing import Any

from data_builders.common import Context, Where, as_object, optional, require
from data_builders.samples import MediaRef, make_sample
from data_builders.sharegpt import parse_turns
from mmtune.data.sample import Message, Sample

IMAGE = "<image>"


def convert(value: Any, where: Where, ctx: Context) -> list[Sample]:
    record = as_object(value, where)
    where = where.with_id(record.get("id"))
    messages = parse_turns(require(record, "conversations", list, where), where, "conversations")
    image = optional(record, "image", str, where)
    media = [MediaRef("image", image, "image")] if image else []
    if media and not any(IMAGE in m.content for m in messages):
        messages = _prepend_image(messages)
    return [make_sample(where, ctx, messages, media, field="conversations")]


def _prepend_image(messages: list[Message]) -> list[Message]:
    """Put the implicit image at the start of the first user turn (unchanged if there is no user turn)."""
    for i, m in enumerate(messages):
        if m.role == "user":
            return messages[:i] + [Message("user", f"{IMAGE}\n{m.content}")] + messages[i + 1:]
    return messages
