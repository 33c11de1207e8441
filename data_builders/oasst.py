"""OpenAssistant conversation trees (oasst1, oasst2) -> one Sample per thread.

Two JSON Lines layouts (optionally .gz), also mixed in one file:
- trees: one per line, `{message_tree_id, prompt: {message_id?, text, role: "prompter", replies: [...]}}`, every
  reply `{message_id?, text, role, rank, replies}`;
- message rows: `{message_id, parent_id, message_tree_id, text, role, rank, deleted?, review_result?}`, the rows of
  a tree next to each other (as in the published exports; `sort` by message_tree_id otherwise), in any order
  inside the tree. `read_trees` gathers them into one record per tree, so memory holds one tree (and the ids
  of finished trees), not the file.

A thread is a root-to-leaf path: by default the best-ranked one per tree (lowest `rank` at every step, a missing
rank last, ties in file order), with `all_paths` every one. A trailing prompter message is dropped so a thread ends
with an assistant turn, and paths that then coincide are written once. Messages marked `deleted` or that failed
review (`review_result: false`) are left out with their replies, as the OpenAssistant releases do. Sample ids are
`{message_tree_id}/{key of the thread's last message}`, the key being its message_id (or its field path).
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator

from data_builders.common import (INVALID_SAMPLE, MISSING_FIELD, NO_ASSISTANT_REPLY, WRONG_TYPE, Context, Where,
                                  as_object, map_role, optional, require)
from data_builders.records import Record, read_records
from data_builders.samples import make_sample
from mmtune.data.sample import Message, Sample
from mmtune.errors import DataError

ROLES = {"prompter": "user", "assistant": "assistant"}


@dataclass(frozen=True)
class Rows:
    """The message rows of one tree, with the line each came from."""
    tree_id: str
    rows: list[tuple[int, Any]]


@dataclass
class _Node:
    key: str
    role: str
    text: str
    rank: float | None
    replies: list["_Node"] = field(default_factory=list)


def read_trees(path: Path) -> Iterator[Record]:
    """Records of `path`, with consecutive message rows of one tree gathered into a single `Rows` record.

    Records are renumbered per tree. A tree whose rows are split by another tree raises DataError, since its
    first part would already be written.
    """
    group: list[Record] = []
    done: set[str] = set()
    number = 0
    for record in read_records(path):
        tree_id = _row_tree(record)
        if group and tree_id != _row_tree(group[0]):
            done.add(_row_tree(group[0]))
            yield _gather(group, number)
            number, group = number + 1, []
        if tree_id is None:
            yield replace(record, number=number)
            number += 1
        elif tree_id in done:
            raise DataError(f"{path} line {record.line}: the rows of message tree {tree_id!r} are not next to each "
                            "other; sort the file by message_tree_id")
        else:
            group.append(record)
    if group:
        yield _gather(group, number)


def _row_tree(record: Record) -> str | None:
    """The tree id of a message row, None for anything else (a tree line, an error, a row without a tree id)."""
    value = record.value
    if isinstance(value, dict) and "message_id" in value and isinstance(value.get("message_tree_id"), str):
        return value["message_tree_id"]
    return None


def _gather(group: list[Record], number: int) -> Record:
    rows = Rows(group[0].value["message_tree_id"], [(r.line, r.value) for r in group])
    return Record(number, group[0].line, rows)


def convert(value: Any, where: Where, ctx: Context, *, all_paths: bool = False) -> list[Sample]:
    if isinstance(value, Rows):
        where = where.with_id(value.tree_id)
        root = _assemble(value, where)
    else:
        record = as_object(value, where)
        where = where.with_id(record.get("message_tree_id"))
        if "prompt" not in record:
            raise where.error("prompt", "missing: expected a message tree (with 'prompt') or a message row (with "
                                        "'message_id' and 'message_tree_id')", MISSING_FIELD)
        root = _node(require(record, "prompt", dict, where), where, "prompt", _tree_replies)
    tree_id = where.id or f"{ctx.source}-{where.record}"
    threads = _threads(root, all_paths)
    if not threads:
        raise where.error(None, "the tree has no assistant reply (after leaving out deleted messages and those that "
                                "failed review)", NO_ASSISTANT_REPLY)
    return [make_sample(where, ctx, [Message(n.role, n.text) for n in path], sample_id=f"{tree_id}/{path[-1].key}")
            for path in threads]


def _node(obj: dict, where: Where, prefix: str, replies: Callable[[dict, Where, str], list]) -> _Node | None:
    """One message and, through `replies`, its subtree; None when it is deleted or failed review."""
    if obj.get("deleted") is True or obj.get("review_result") is False:
        return None
    name = (lambda key: f"{prefix}.{key}") if prefix else (lambda key: key)
    role = map_role(require(obj, "role", str, where, name("role")), ROLES, where, name("role"))
    node = _Node(key=str(obj.get("message_id") or prefix), role=role,
                 text=require(obj, "text", str, where, name("text")),
                 rank=optional(obj, "rank", (int, float), where, name=name("rank")))
    node.replies = [child for child in replies(obj, where, prefix) if child is not None]
    return node


def _tree_replies(obj: dict, where: Where, prefix: str) -> list[_Node | None]:
    replies = optional(obj, "replies", list, where, default=[], name=f"{prefix}.replies")
    out = []
    for i, reply in enumerate(replies):
        name = f"{prefix}.replies[{i}]"
        if not isinstance(reply, dict):
            raise where.error(name, f"expected a message object, got {type(reply).__name__}", WRONG_TYPE)
        out.append(_node(reply, where, name, _tree_replies))
    return out


def _assemble(tree: Rows, where: Where) -> _Node | None:
    """Link the rows of one tree through parent_id; errors name the line of the offending row."""
    rows: dict[str, tuple[dict, Where]] = {}
    children: dict[str | None, list[str]] = {}
    for line, value in tree.rows:
        row_where = replace(where, line=line)
        row = as_object(value, row_where)
        message_id = require(row, "message_id", str, row_where)
        if message_id in rows:
            raise row_where.error("message_id", f"{message_id!r} appears twice in the tree", INVALID_SAMPLE)
        rows[message_id] = (row, row_where)
        children.setdefault(optional(row, "parent_id", str, row_where), []).append(message_id)
    roots = children.get(None, [])
    if len(roots) != 1:
        raise where.error("parent_id", f"expected one message without a parent (the prompt), found {len(roots)}",
                          INVALID_SAMPLE)
    for parent, kids in children.items():
        if parent is not None and parent not in rows:
            raise rows[kids[0]][1].error("parent_id", f"parent {parent!r} is not in this tree", INVALID_SAMPLE)

    def replies(row: dict, _where: Where, _prefix: str) -> list[_Node | None]:
        return [_node(*rows[kid], "", replies) for kid in children.get(row["message_id"], [])]

    return _node(*rows[roots[0]], "", replies)


def _threads(root: _Node | None, all_paths: bool) -> list[list[_Node]]:
    """Root-to-leaf paths cut back to their last assistant turn, each distinct thread once."""
    if root is None:
        return []
    paths = _all_paths(root) if all_paths else [_best_path(root)]
    threads: dict[str, list[_Node]] = {}
    for path in paths:
        while path and path[-1].role != "assistant":
            path = path[:-1]
        if path:
            threads.setdefault(path[-1].key, path)
    return list(threads.values())


def _best_path(node: _Node) -> list[_Node]:
    path = [node]
    while node.replies:
        node = min(node.replies, key=lambda n: (n.rank is None, n.rank or 0))
        path.append(node)
    return path


def _all_paths(node: _Node) -> Iterator[list[_Node]]:
    if not node.replies:
        yield [node]
    for reply in node.replies:
        for rest in _all_paths(reply):
            yield [node, *rest]
