"""Alpaca builder: instruction (+ input) -> user, output -> assistant, with optional system and history."""
from __future__ import annotations

import json

import pytest

from mmtune.errors import DataError
from tests.helpers import SAMPLES


def test_real_alpaca_demo_round_trips(build_read):
    path = SAMPLES / "text" / "alpaca_en_demo.json"
    report, samples = build_read("alpaca", path)
    source = json.loads(path.read_text())
    assert (report.records, report.train, report.eval) == (999, 999, 0)
    assert len(samples) == 999
    for record, sample in zip(source, samples):
        user = record["instruction"] + ("\n\n" + record["input"] if record["input"] else "")
        assert [(m.role, m.content) for m in sample.messages] == [("user", user), ("assistant", record["output"])]
    assert samples[5].id == "alpaca_en_demo-5" and samples[5].source == "alpaca_en_demo" and samples[5].media == []
    assert any(r["input"] for r in source)  # the input branch is exercised


def test_system_history_and_input(build_read, write_json):
    path = write_json("a.jsonl", [{"id": "r1", "system": "Be brief.", "instruction": "Add them.", "input": "2 and 3",
                                   "output": "5", "history": [["Hi", "Hello!"], ["Ready?", "Yes."]]}], lines=True)
    _, [sample] = build_read("alpaca", path)
    assert sample.id == "r1"
    assert [(m.role, m.content) for m in sample.messages] == [
        ("system", "Be brief."), ("user", "Hi"), ("assistant", "Hello!"), ("user", "Ready?"), ("assistant", "Yes."),
        ("user", "Add them.\n\n2 and 3"), ("assistant", "5")]


@pytest.mark.parametrize("record, match", [
    ({"instruction": "Say hi."}, r"a\.json record 1 \(line \d+\) field output: missing"),
    ({"instruction": 7, "output": "x"}, r"a\.json record 1 \(line \d+\) field instruction: expected a string, got int"),
    ({"instruction": "q", "output": "a", "history": [["only one"]]},
     r"a\.json record 1 \(line \d+\) field history\[0\]: expected a \[user, assistant\] pair of strings"),
    (["not", "an", "object"], r"a\.json record 1 \(line \d+\): expected a JSON object, got list"),
])
def test_bad_records_name_file_record_and_field(build_read, write_json, record, match):
    path = write_json("a.json", [{"instruction": "ok", "output": "ok"}, record])
    with pytest.raises(DataError, match=match):
        build_read("alpaca", path)
