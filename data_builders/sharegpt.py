"""ShareGPT / Vicuna chats: `{id?, system?, conversations: [{from, value}, ...]}` -> one Sample per record.

`parse_turns` is shared with the LLaVA and role/content (mllm) builders, which use the same turn lists, and
`turns_or_pair` with the builders whose rows hold either such a list or one question/answer pair.
"""
from __future__ import annotations

from typing import Any

from data_builders.common import (EMPTY_CONVERSATION, INVALID_SAMPLE, WRONG_TYPE, Context, Where, as_object, map_role,
                                  optional, require)
from data_builders.samples import make_sample
from mmtune.data.sample import Message, Sample

ROLES = {"system": "system", "human": "user", "user": "user",
         "gpt": "assistant", "assistant": "assistant", "chatgpt": "assistant", "bard": "assistant"}
"""Source role names (ShareGPT, Vicuna, LLaVA, OpenAI-style) -> canonical roles."""


def convert(value: Any, where: Where, ctx: Context) -> list[Sample]:
    record = as_object(value, where)
    where = where.with_id(record.get("id"))
    messages = parse_turns(require(record, "conversations", list, where), where, "conversations")
    system = optional(record, "system", str, where, default="")
    if system:
        if messages[0].role == "system":
            raise where.error("system", "given both as a top-level string and as conversations[0]; keep one",
                              INVALID_SAMPLE)
        messages.insert(0, Message("system", system))
    return [make_sample(where, ctx, messages, field="conversations")]


def parse_turns(turns: list, where: Where, field: str, role_key: str = "from",
                content_key: str = "value") -> list[Message]:
    """Messages of a turn list; errors name e.g. `conversations[2].from`. An empty list is an error."""
    if not turns:
        raise where.error(field, "empty conversation", EMPTY_CONVERSATION)
    messages = []
    for i, turn in enumerate(turns):
        name = f"{field}[{i}]"
        if not isinstance(turn, dict):
            raise where.error(name, f"expected an object with {role_key!r} and {content_key!r}, "
                                    f"got {type(turn).__name__}", WRONG_TYPE)
        role = map_role(require(turn, role_key, str, where, f"{name}.{role_key}"), ROLES, where, f"{name}.{role_key}")
        messages.append(Message(role, require(turn, content_key, str, where, f"{name}.{content_key}")))
    return messages


def turns_or_pair(record: dict, where: Where, question: str, answer: str) -> tuple[list[Message], str]:
    """The record's `conversations`, else one user turn from field `question` and the reply from `answer`; with
    the field that placeholder errors name."""
    if "conversations" in record:
        return parse_turns(require(record, "conversations", list, where), where, "conversations"), "conversations"
    return [Message("user", require(record, question, str, where)),
            Message("assistant", require(record, answer, str, where))], question
