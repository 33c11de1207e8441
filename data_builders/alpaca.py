"""Alpaca-format records -> one Sample each; GPT-4-LLM and LLaMA-Factory's alpaca files use the same format.

Record: `{instruction, input?, output, system?, history?}`. The user turn is the instruction, then a blank line and
the input when there is one. `history` (LLaMA-Factory's column) is a list of `[user, assistant]` pairs that come
before it.
"""
from __future__ import annotations

from typing import Any

from data_builders.common import WRONG_TYPE, Context, Where, as_object, optional, require
from data_builders.samples import make_sample
from mmtune.data.sample import Message, Sample


def convert(value: Any, where: Where, ctx: Context) -> list[Sample]:
    record = as_object(value, where)
    where = where.with_id(record.get("id"))
    instruction = require(record, "instruction", str, where)
    extra = optional(record, "input", str, where, default="")
    output = require(record, "output", str, where)
    system = optional(record, "system", str, where, default="")
    messages = [Message("system", system)] if system else []
    messages += _history(optional(record, "history", list, where, default=[]), where)
    messages.append(Message("user", f"{instruction}\n\n{extra}" if extra else instruction))
    messages.append(Message("assistant", output))
    return [make_sample(where, ctx, messages)]


def _history(pairs: list, where: Where) -> list[Message]:
    messages = []
    for i, pair in enumerate(pairs):
        if not (isinstance(pair, list) and len(pair) == 2 and all(isinstance(t, str) for t in pair)):
            raise where.error(f"history[{i}]", f"expected a [user, assistant] pair of strings, got {pair!r:.80}",
                              WRONG_TYPE)
        messages += [Message("user", pair[0]), Message("assistant", pair[1])]
    return messages
