"""Evaluation questions from a JSONL file or from canonical shards, with bad records named or counted.

JSONL, one question a line: `question` (text) or `messages` ([{role, content}], ending with a user turn);
`image` (a path, or a list, relative to the JSONL file); `answer` (the reference); `choices` (options of a
multiple-choice question, appended to the question as lettered lines); `id` and `task` (optional, for per-task
accuracy). Shards: every sample's last assistant turn is the reference and the turns before it the question.
A record that cannot be used raises DataError naming the file, the line (or shard key) and the field, or with
`on_error="skip"` is counted under `skipped_<reason>`.
"""
from __future__ import annotations

import string
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

from mmtune.data.media import decode_image
from mmtune.data.jsonl import json_object, numbered_lines
from mmtune.data.sample import Message
from mmtune.errors import DataError

CHOICE_INSTRUCTION = "Answer with the option's letter from the given choices directly."
"""LLaVA's multiple-choice prompt (ScienceQA, MMBench), after the lettered options."""


@dataclass
class EvalItem:
    id: str
    messages: list[Message]
    """The conversation up to the user turn to answer."""
    images: list = field(default_factory=list)
    """PIL images for the `<image>` placeholders, in order."""
    answer: str | None = None
    choices: list[str] | None = None
    task: str = ""
    where: str = ""
    """File and line (or shard and key), for error messages."""


@dataclass
class Loaded:
    items: list[EvalItem]
    counts: Counter


def load_items(source: str | list[str], *, need_answer: bool = True, on_error: str = "raise") -> Loaded:
    """Questions from a `.jsonl` file, or from shards (paths, globs, directories)."""
    from mmtune.data.shards import expand_shards

    sources = [source] if isinstance(source, str) else list(source)
    if len(sources) == 1 and sources[0].endswith(".jsonl"):
        return _load_jsonl(Path(sources[0]), need_answer, on_error)
    return load_shards(expand_shards(sources, "--data"), _shard_item, on_error)


def _keep(loaded: Loaded, parse, on_error: str) -> None:
    try:
        loaded.items.append(parse())
    except DataError as e:
        if on_error != "skip":
            raise
        loaded.counts[f"skipped_{getattr(e, 'reason', 'bad_record')}"] += 1


def _load_jsonl(path: Path, need_answer: bool, on_error: str) -> Loaded:
    loaded = Loaded([], Counter())
    for where, line in numbered_lines(path, "--data"):
        _keep(loaded, lambda: _jsonl_item(line, where, path.parent, need_answer), on_error)
    return loaded


def _jsonl_item(line: str, where: str, folder: Path, need_answer: bool) -> EvalItem:
    record = json_object(line, where)
    answer = record.get("answer")
    if need_answer and not isinstance(answer, str):
        raise DataError(f"{where}: field 'answer': " + ("missing" if answer is None else "expected a string"))
    choices = record.get("choices")
    if choices is not None and not (isinstance(choices, list) and choices and all(isinstance(c, str) for c in choices)
                                    and len(choices) <= 26):
        raise DataError(f"{where}: field 'choices': expected a list of 1 to 26 strings")
    messages = _messages(record, where)
    if choices:
        options = "\n".join(f"{letter}. {c}" for letter, c in zip(string.ascii_uppercase, choices))
        messages[-1] = Message("user", f"{messages[-1].content}\n{options}\n{CHOICE_INSTRUCTION}")
    paths = record.get("image") or []
    images = [_open_image(folder / p, where) for p in ([paths] if isinstance(paths, str) else paths)]
    _attach(messages, len(images), where)
    return EvalItem(str(record.get("id", where)), messages, images, answer, choices, str(record.get("task", "")),
                    where)


def _messages(record: dict, where: str) -> list[Message]:
    if isinstance(record.get("question"), str):
        return [Message("user", record["question"])]
    turns = record.get("messages")
    if not isinstance(turns, list) or not turns:
        raise DataError(f"{where}: field 'question' (a string) or 'messages' (a list of turns) is missing")
    for i, t in enumerate(turns):
        if not (isinstance(t, dict) and t.get("role") in ("system", "user", "assistant")
                and isinstance(t.get("content"), str)):
            raise DataError(f"{where}: field 'messages[{i}]': expected {{role: system|user|assistant, content: str}}")
    if turns[-1]["role"] != "user":
        raise DataError(f"{where}: field 'messages': the last turn must be the user's question")
    return [Message(t["role"], t["content"]) for t in turns]


def _open_image(path: Path, where: str):
    if not path.is_file():
        raise DataError(f"{where}: field 'image': no such file {path}")
    return decode_image(path.read_bytes(), f"{where} image {path}")


def _attach(messages: list[Message], n_images: int, where: str) -> None:
    """Images without placeholders go before the first user turn's text, one `<image>` line each (as in chat)."""
    placeholders = sum(m.content.count("<image>") for m in messages)
    if n_images and not placeholders:
        first = next(i for i, m in enumerate(messages) if m.role == "user")
        messages[first] = Message("user", "<image>\n" * n_images + messages[first].content)
    elif placeholders != n_images:
        raise DataError(f"{where}: field 'image': {n_images} image(s) for {placeholders} <image> placeholder(s)")


def load_shards(shards: list[str], parse, on_error: str) -> Loaded:
    """`parse(sample)` of every sample of the shards, in order; bad shards and samples raise or are counted."""
    from mmtune.data.stream import ShardStream

    loaded = Loaded([], Counter())
    for item in ShardStream(shards, lambda s: s, shuffle=False):
        if item.error is not None:
            if on_error != "skip":
                raise DataError(item.error)
            loaded.counts[f"skipped_{item.reason}"] += 1
            continue
        _keep(loaded, lambda: parse(item.value), on_error)
    return loaded


def _shard_item(s) -> EvalItem:
    where = s.where
    if s.messages[-1].role != "assistant":
        raise DataError(f"{where}: field messages: the last turn must be the assistant's reference answer")
    images = [decode_image(s.data[m.member], f"{where} member {m.member!r}") for m in s.media if m.kind == "image"]
    if len(images) != len(s.media):
        raise DataError(f"{where}: field media: only images can be evaluated here, got "
                        f"{sorted({m.kind for m in s.media})}")
    return EvalItem(s.id, s.messages[:-1], images, s.messages[-1].content, None, s.task, where)
