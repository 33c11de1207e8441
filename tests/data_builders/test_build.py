"""The shared build loop: registry, options, train/eval split, shard sizes, skip policy, staging of the output."""
from __future__ import annotations

import base64
import json
from collections import Counter
from pathlib import Path
from typing import Callable

import pytest

from data_builders import BUILDERS, build
from mmtune.errors import ConfigError, DataError


def mimic_it_input(write_json: Callable[..., Path], image: bytes) -> Path:
    """MIMIC-IT reads an instruction object and the base64 images beside it, not a list of records."""
    write_json("f.json", {"i": base64.b64encode(image).decode()})
    entry = {"instruction": "q", "answer": "a", "image_ids": ["i"], "rel_ins_ids": []}
    return write_json("f_instructions.json", {"meta": {}, "data": {"m": entry}})


# One small valid input per builder: adding a builder without adding it here fails test_every_builder_has_a_fixture.
FIXTURES = {
    "alpaca": [{"instruction": "Say hi.", "output": "Hi."}],
    "sharegpt": [{"id": "s", "conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]}],
    "oasst": [{"message_tree_id": "t", "prompt": {"text": "q", "role": "prompter",
                                                   "replies": [{"text": "a", "role": "assistant", "rank": 0}]}}],
    "llava": [{"id": "l", "image": "a.png", "conversations": [{"from": "human", "value": "<image>\nq"},
                                                                 {"from": "gpt", "value": "a"}]}],
    "mllm": [{"messages": [{"role": "user", "content": "<image>q"}, {"role": "assistant", "content": "a"}],
              "images": ["a.png"]}],
    "ip2p": [{"input_image": "a.png", "edit_prompt": "make it blue", "edited_image": "a.png"}],
    "vision-flan": [{"id": "v", "image": "a.png", "instruction": "q", "target": "a"}],
    "lamm": [{"id": "l", "image": "a.png", "conversations": [{"from": "human", "value": "q"},
                                                              {"from": "gpt", "value": "a"}]}],
    "video-chat": [{"video": "a.png", "q": "q", "a": "a"}],  # video bytes are not decoded at build time
    "mimic-it": mimic_it_input,
}


def alpaca_records(n: int, bad: dict[int, dict] | None = None) -> list[dict]:
    records = [{"instruction": f"Question {i}?", "output": f"Answer {i}."} for i in range(n)]
    for i, record in (bad or {}).items():
        records[i] = record
    return records


def test_every_builder_has_a_fixture():
    assert sorted(FIXTURES) == sorted(BUILDERS)


@pytest.mark.parametrize("name", sorted(BUILDERS))
def test_every_builder_round_trips_its_fixture(name, build_read, write_json, image_file):
    image = image_file("a.png").read_bytes()
    inputs = FIXTURES[name]
    path = inputs(write_json, image) if callable(inputs) else write_json("f.json", inputs)
    report, samples = build_read(name, path)
    assert report.train == len(samples) == 1
    edit = samples[0].target is not None  # an edit triplet learns from its target image, not a reply
    assert [m.role for m in samples[0].messages] == (["user"] if edit else ["user", "assistant"])
    assert [samples[0].data[m.member] for m in samples[0].media] == [image] * len(samples[0].media)


def test_eval_split_is_per_record_and_deterministic(tmp_path, write_json, read_shards):
    path = write_json("a.json", alpaca_records(400))

    def eval_ids(out, seed):
        build("alpaca", path, tmp_path / out, eval_fraction=0.25, seed=seed)
        return [s.id for s in read_shards(tmp_path / out, "eval")], len(read_shards(tmp_path / out))

    first, train = eval_ids("a", seed=1)
    assert eval_ids("b", seed=1) == (first, train)
    assert eval_ids("c", seed=2)[0] != first
    assert 60 < len(first) < 140 and len(first) + train == 400


def test_all_threads_of_a_tree_go_to_one_split(tmp_path, write_json, read_shards):
    replies = [{"message_id": f"a{j}", "text": f"answer {j}", "role": "assistant", "rank": j} for j in range(3)]
    trees = [{"message_tree_id": f"t{i}", "prompt": {"text": "q", "role": "prompter", "replies": replies}}
             for i in range(40)]
    build("oasst", write_json("t.jsonl", trees, lines=True), tmp_path / "o", eval_fraction=0.5, all_paths=True)
    for prefix in ("train", "eval"):
        per_tree = Counter(s.id.split("/")[0] for s in read_shards(tmp_path / "o", prefix))
        assert per_tree and set(per_tree.values()) == {3}


def test_shard_size_and_index(tmp_path, write_json):
    report = build("alpaca", write_json("a.json", alpaca_records(25)), tmp_path / "o", shard_size=10)
    assert [p.name for p in report.shards] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    index = json.loads((tmp_path / "o" / "train-index.json").read_text())
    assert index == {"samples": 25, "shards": {"train-000000.tar": 10, "train-000001.tar": 10, "train-000002.tar": 5}}
    assert sorted(p.name for p in (tmp_path / "o").iterdir()) == ["train-000000.tar", "train-000001.tar",
                                                                   "train-000002.tar", "train-index.json"]


def test_skip_policy_counts_each_reason(tmp_path, write_json, read_shards):
    bad = {1: {"instruction": "no output"}, 3: {"output": "no instruction"}, 4: {"instruction": 1, "output": "x"},
           6: {"instruction": "<image> but no media", "output": "x"}, 7: {"instruction": "q", "output": ""}}
    path = write_json("a.json", alpaca_records(9, bad))
    report = build("alpaca", path, tmp_path / "o", on_error="skip")
    assert report.skipped == Counter(missing_field=2, wrong_type=1, placeholder_mismatch=1)
    assert report.first_errors["missing_field"].startswith(f"{path} record 1 (line ")
    assert (report.records, report.train) == (9, 5)
    assert [s.id for s in read_shards(tmp_path / "o")] == ["a-0", "a-2", "a-5", "a-7", "a-8"]
    assert report.skip_lines()[0].startswith("skipped 2 record(s) for missing_field; first: ")


def test_malformed_json_lines_are_skipped_but_a_broken_array_stops(tmp_path):
    lines = tmp_path / "a.jsonl"
    lines.write_text('{"instruction": "q", "output": "a"}\n{"instruction": \n{"instruction": "q", "output": "a"}\n')
    report = build("alpaca", lines, tmp_path / "o1", on_error="skip")
    assert (report.train, report.skipped) == (2, Counter(malformed_json=1))
    array = tmp_path / "a.json"
    array.write_text('[{"instruction": "q", "output": "a"}, {"instruction": ]')
    with pytest.raises(DataError, match=r"a\.json record 1 \(line 1\): malformed JSON.*cannot be read past"):
        build("alpaca", array, tmp_path / "o2", on_error="skip")


def test_a_failed_build_leaves_no_shards_and_can_be_rerun(tmp_path, write_json):
    path = write_json("a.json", alpaca_records(30, {25: {"instruction": "no output"}}))
    with pytest.raises(DataError, match=r"a\.json record 25 \(line \d+\) field output: missing"):
        build("alpaca", path, tmp_path / "o", shard_size=10)
    assert list((tmp_path / "o").iterdir()) == []
    assert build("alpaca", path, tmp_path / "o", shard_size=10, on_error="skip").train == 29


def test_existing_shards_are_never_mixed_in(tmp_path, write_json):
    path = write_json("a.json", alpaca_records(3))
    build("alpaca", path, tmp_path / "o")
    with pytest.raises(DataError, match=r"o already holds shards \(train-000000\.tar, train-index\.json\); remove"):
        build("alpaca", path, tmp_path / "o")


def test_limit_reads_only_the_first_records(tmp_path, write_json):
    report = build("alpaca", write_json("a.json", alpaca_records(50)), tmp_path / "o", limit=7)
    assert (report.records, report.train) == (7, 7)


def test_nothing_written_is_an_error(tmp_path, write_json):
    path = write_json("a.json", [{"instruction": "q"}, {"instruction": "r"}])
    with pytest.raises(DataError, match=r"a\.json: no sample written from 2 record\(s\); skipped 2 record\(s\) for "
                                        r"missing_field"):
        build("alpaca", path, tmp_path / "o", on_error="skip")
    assert list((tmp_path / "o").iterdir()) == []


@pytest.mark.parametrize("kwargs, error, match", [
    ({"name": "dolly"}, ConfigError, r"unknown builder 'dolly'; choose one of \['alpaca', 'ip2p', 'lamm', 'llava'"),
    ({"all_paths": True}, ConfigError, r"builder 'alpaca' has no option 'all_paths' \(its options: none\)"),
    ({"on_error": "ignore"}, ConfigError, r"on_error must be one of \('raise', 'skip'\), got 'ignore'"),
    ({"eval_fraction": 1.0}, ConfigError, r"eval_fraction must be in \[0, 1\), got 1.0"),
    ({"shard_size": 0}, ConfigError, r"shard_size and limit must be >= 1, got 0 and None"),
    ({"input_path": "nowhere.json"}, DataError, r"input file nowhere\.json not found"),
    ({"image_folder": "no_such_dir"}, DataError, r"image folder no_such_dir not found"),
])
def test_bad_arguments(tmp_path, write_json, kwargs, error, match):
    args = {"name": "alpaca", "input_path": write_json("a.json", alpaca_records(1)), "out_dir": tmp_path / "o"}
    args.update(kwargs)
    with pytest.raises(error, match=match):
        build(**args)
