"""ShareGPT / Vicuna builder: `conversations` of {from, value} with role aliases, an optional top-level system."""
from __future__ import annotations

import json

import pytest

from mmtune.errors import DataError
from tests.helpers import SAMPLES

ROLE = {"human": "user", "gpt": "assistant"}


def test_real_dummy_conversations_round_trip(build_read):
    path = SAMPLES / "text" / "dummy_conversation.json"
    report, samples = build_read("sharegpt", path)
    source = json.loads(path.read_text())
    assert report.train == len(samples) == len(source) == 500
    for record, sample in zip(source, samples):
        assert sample.id == record["id"]
        assert [(m.role, m.content) for m in sample.messages] == [(ROLE[t["from"]], t["value"])
                                                                  for t in record["conversations"]]


def test_role_aliases_and_top_level_system(build_read, write_json):
    turns = [{"from": "user", "value": "a"}, {"from": "chatgpt", "value": "b"}, {"from": "human", "value": "c"},
             {"from": "bard", "value": "d"}]
    path = write_json("c.json", [{"id": 9, "system": "You are terse.", "conversations": turns},
                                 {"conversations": [{"from": "system", "value": "S"}, *turns[:2]]}])
    _, (first, second) = build_read("sharegpt", path)
    assert first.id == "9"
    assert [(m.role, m.content) for m in first.messages] == [
        ("system", "You are terse."), ("user", "a"), ("assistant", "b"), ("user", "c"), ("assistant", "d")]
    assert second.id == "c-1" and second.messages[0].role == "system"


@pytest.mark.parametrize("record, match", [
    ({"id": "x7", "conversations": [{"from": "human", "value": "a"}, {"from": "gpt", "value": "b"},
                                    {"from": "robot", "value": "c"}]},
     r"c\.json record 1 \(line \d+\) id 'x7' field conversations\[2\]\.from: unknown role 'robot'"),
    ({"id": "x8", "conversations": []}, r"record 1 \(line \d+\) id 'x8' field conversations: empty conversation"),
    ({"id": "x9"}, r"record 1 \(line \d+\) id 'x9' field conversations: missing"),
    ({"conversations": [{"from": "human"}]}, r"record 1 \(line \d+\) field conversations\[0\]\.value: missing"),
    ({"conversations": [{"from": "human", "value": "only a question"}]},
     r"c\.json record 1 \(line \d+\): field messages: no assistant turn"),
    ({"system": "a", "conversations": [{"from": "system", "value": "b"}, {"from": "gpt", "value": "c"}]},
     r"record 1 \(line \d+\) field system: given both as a top-level string and as conversations\[0\]"),
])
def test_bad_records_name_file_record_and_field(build_read, write_json, record, match):
    ok = {"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}
    path = write_json("c.json", [ok, record])
    with pytest.raises(DataError, match=match):
        build_read("sharegpt", path)
