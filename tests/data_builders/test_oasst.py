"""OpenAssistant builder: trees (nested or as message rows) -> best-ranked or all threads ending on an assistant."""
from __future__ import annotations

import random
from collections import Counter

import pytest

from mmtune.errors import DataError


def msg(message_id, role, text, rank=None, replies=(), **extra):
    return {"message_id": message_id, "role": role, "text": text, "rank": rank, "replies": list(replies), **extra}


# P3's replies list the unranked A5 first: a missing rank must still lose to rank 0 (a float, as exports made with
# pandas write it). A7 is deleted (with its reply P8), and P4 is a trailing prompter message, so its path ends at A2.
TREE = {"message_tree_id": "T1", "prompt": msg("P0", "prompter", "What is 2+2?", replies=[
    msg("A1", "assistant", "4.", rank=1),
    msg("A2", "assistant", "Four.", rank=0, replies=[
        msg("P3", "prompter", "And 3+3?", rank=0, replies=[msg("A5", "assistant", "6", rank=None),
                                                           msg("A6", "assistant", "Six.", rank=0.0)]),
        msg("P4", "prompter", "Thanks!", rank=1)]),
    msg("A7", "assistant", "spam", rank=2, deleted=True, replies=[msg("P8", "prompter", "?")]),
])}
BEST = [("user", "What is 2+2?"), ("assistant", "Four."), ("user", "And 3+3?"), ("assistant", "Six.")]
ALL_IDS = ["T1/A1", "T1/A5", "T1/A6", "T1/A2"]


def rows_of(tree: dict) -> list[dict]:
    """The tree as message rows (the flat export layout)."""
    rows = []

    def walk(node, parent):
        row = {k: v for k, v in node.items() if k != "replies"}
        rows.append({**row, "parent_id": parent, "message_tree_id": tree["message_tree_id"], "lang": "en"})
        for reply in node["replies"]:
            walk(reply, node["message_id"])
    walk(tree["prompt"], None)
    return rows


def test_best_ranked_thread_per_tree(build_read, write_json):
    _, [sample] = build_read("oasst", write_json("t.jsonl", [TREE], lines=True))
    assert sample.id == "T1/A6"
    assert [(m.role, m.content) for m in sample.messages] == BEST


def test_all_paths_end_on_an_assistant_and_are_written_once(build_read, write_json):
    _, samples = build_read("oasst", write_json("t.jsonl", [TREE], lines=True), all_paths=True)
    assert [s.id for s in samples] == ALL_IDS
    assert all(s.messages[-1].role == "assistant" for s in samples)
    assert [m.content for m in samples[3].messages] == ["What is 2+2?", "Four."]  # trailing "Thanks!" dropped


@pytest.mark.parametrize("all_paths", [False, True])
def test_message_rows_give_the_same_threads_as_the_tree(build_read, write_json, all_paths):
    rows = rows_of(TREE)
    rows = rows[:1] + random.Random(0).sample(rows[1:], len(rows) - 1)  # any order inside a tree
    other = rows_of({"message_tree_id": "T2", "prompt": msg("Q0", "prompter", "Hi", replies=[
        msg("B1", "assistant", "Hello", rank=0), msg("B2", "assistant", "bad", rank=1, review_result=False)])})
    _, from_tree = build_read("oasst", write_json("t.jsonl", [TREE], lines=True), all_paths=all_paths)
    report, from_rows = build_read("oasst", write_json("m.jsonl", rows + other, lines=True), all_paths=all_paths)
    assert report.records == 2
    assert [(s.id, s.messages) for s in from_rows[:len(from_tree)]] == [(s.id, s.messages) for s in from_tree]
    assert [s.id for s in from_rows[len(from_tree):]] == ["T2/B1"]


def test_tree_without_assistant_reply_is_an_error_or_a_counted_skip(build_read, write_json):
    lonely = {"message_tree_id": "T3", "prompt": msg("P", "prompter", "Anyone?", replies=[
        msg("A", "assistant", "rejected", review_result=False)])}
    path = write_json("t.jsonl", [TREE, lonely], lines=True)
    with pytest.raises(DataError, match=r"t\.jsonl record 1 \(line 2\) id 'T3': the tree has no assistant reply"):
        build_read("oasst", path)
    report, samples = build_read("oasst", path, on_error="skip")
    assert [s.id for s in samples] == ["T1/A6"]
    assert report.skipped == Counter(no_assistant_reply=1)


def test_tree_errors_name_the_field_path(build_read, write_json):
    bad = {"message_tree_id": "T4", "prompt": msg("P", "prompter", "q", replies=[
        msg("A", "assistant", "a"), msg("B", "bot", "b")])}
    with pytest.raises(DataError, match=r"record 0 \(line 1\) id 'T4' field prompt\.replies\[1\]\.role: unknown "
                                        r"role 'bot', expected one of \['assistant', 'prompter'\]"):
        build_read("oasst", write_json("t.jsonl", [bad], lines=True))


@pytest.mark.parametrize("edit, match", [
    (lambda rows: rows[2].update(role="moderator"), r"record 0 \(line 3\) id 'T1' field role: unknown role"),
    (lambda rows: rows[2].update(parent_id="nope"), r"record 0 \(line 3\) id 'T1' field parent_id: parent 'nope' is "
                                                    r"not in this tree"),
    (lambda rows: rows[2].update(parent_id=None), r"id 'T1' field parent_id: expected one message without a parent"),
    (lambda rows: rows[2].update(message_id="P0"), r"line 3\) id 'T1' field message_id: 'P0' appears twice"),
    (lambda rows: rows[2].pop("text"), r"record 0 \(line 3\) id 'T1' field text: missing"),
    (lambda rows: rows[2].update(rank="first"), r"id 'T1' field rank: expected an integer or a number, got str"),
])
def test_row_errors_name_the_line(build_read, write_json, edit, match):
    rows = rows_of(TREE)
    edit(rows)
    with pytest.raises(DataError, match=match):
        build_read("oasst", write_json("m.jsonl", rows, lines=True))


def test_rows_of_a_tree_must_be_next_to_each_other(build_read, write_json):
    first, second = rows_of(TREE), rows_of({"message_tree_id": "T2", "prompt": msg("Q", "prompter", "Hi", replies=[
        msg("B", "assistant", "Hello")])})
    path = write_json("m.jsonl", first[:3] + second + first[3:], lines=True)
    with pytest.raises(DataError, match=r"m\.jsonl line 6: the rows of message tree 'T1' are not next to each "
                                        r"other; sort the file by message_tree_id"):
        build_read("oasst", path)


def test_a_line_that_is_neither_a_tree_nor_a_row(build_read, write_json):
    with pytest.raises(DataError, match=r"record 0 \(line 1\) field prompt: missing: expected a message tree"):
        build_read("oasst", write_json("m.jsonl", [{"message_id": "x", "text": "no tree id"}], lines=True))
