"""Media paths must resolve inside the image folder (a downloaded data set must not pull in any file of the
machine), in every builder that reads media, unless the build explicitly allows it."""
from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import pytest

from mmtune.data.sample import Sample
from mmtune.errors import DataError


def llava_record(record_id: str, path: str) -> tuple[dict, str]:
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A square."}]
    return {"id": record_id, "image": path, "conversations": turns}, "image"


def mllm_record(record_id: str, path: str) -> tuple[dict, str]:
    messages = [{"role": "user", "content": "<image>What is it?"}, {"role": "assistant", "content": "A square."}]
    return {"id": record_id, "messages": messages, "images": [path]}, "images[0]"


def vision_flan_record(record_id: str, path: str) -> tuple[dict, str]:
    return {"id": record_id, "image": path, "instruction": "What is it?", "target": "A square."}, "image"


def lamm_record(record_id: str, path: str) -> tuple[dict, str]:
    return {**llava_record(record_id, path)[0], "task_type": "VQA"}, "image"


def video_chat_record(record_id: str, path: str) -> tuple[dict, str]:
    return {"id": record_id, "video": path, "q": "What moves?", "a": "A square."}, "video"


RECORDS = {"llava": llava_record, "mllm": mllm_record, "vision-flan": vision_flan_record, "lamm": lamm_record,
           "video-chat": video_chat_record}


def record_id(sample: Sample) -> str:
    """The source record's id (Vision-Flan appends `/record number` to make sample ids unique)."""
    return sample.id.split("/")[0]


@pytest.fixture
def folder(tmp_path: Path, image_file) -> Path:
    """tmp_path/data, the input's folder, holds inside.png and a symlink to it; tmp_path/outside.png lies outside,
    and data/out.png is a symlink to it."""
    (tmp_path / "data").mkdir()
    image_file("data/inside.png")
    image_file("outside.png", "JPEG")
    (tmp_path / "data" / "link.png").symlink_to(tmp_path / "data" / "inside.png")
    (tmp_path / "data" / "out.png").symlink_to(tmp_path / "outside.png")
    return tmp_path / "data"


def escapes(folder: Path) -> dict[str, str]:
    return {"dotdot": "../outside.png", "absolute": str(folder.parent / "outside.png"), "symlink": "out.png"}


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
@pytest.mark.parametrize("builder", sorted(RECORDS))
def test_escaping_path_raises_naming_file_record_and_path(build_read, write_json, folder, builder, kind):
    path = escapes(folder)[kind]
    ok, _ = RECORDS[builder]("ok", "link.png")  # a symlink that stays inside is fine
    bad, field = RECORDS[builder]("bad", path)
    input_path = write_json("data/in.json", [ok, bad])
    expected = (rf"{re.escape(str(input_path))} record 1 \(line \d+\) id 'bad' field {re.escape(field)}: media path "
                rf"{re.escape(repr(path))} is outside the image folder {re.escape(str(folder.resolve()))} "
                rf"\(it resolves to {re.escape(str((folder.parent / 'outside.png').resolve()))}\)")
    with pytest.raises(DataError, match=expected):
        build_read(builder, input_path)
    report, samples = build_read(builder, input_path, on_error="skip")
    assert [record_id(s) for s in samples] == ["ok"]
    assert report.skipped == Counter({"media_outside_folder": 1})


@pytest.mark.parametrize("builder", sorted(RECORDS))
def test_allow_outside_media_reads_every_escaping_path(build_read, write_json, folder, builder):
    records = [RECORDS[builder](kind, path)[0] for kind, path in escapes(folder).items()]
    report, samples = build_read(builder, write_json("data/in.json", records), allow_outside_media=True)
    outside = (folder.parent / "outside.png").read_bytes()
    assert report.skipped == Counter()
    assert [(record_id(s), s.data[s.media[0].member]) for s in samples] == [(kind, outside) for kind in escapes(folder)]


def test_the_boundary_is_the_image_folder_and_the_check_is_on_the_resolved_path(build_read, write_json, folder,
                                                                                tmp_path):
    """`../data/inside.png` leaves data/ and comes back: fine for data/, outside a sibling image folder."""
    other = tmp_path / "other"
    other.mkdir()
    record, _ = llava_record("back", "../data/inside.png")
    input_path = write_json("data/in.json", [record])
    _, [sample] = build_read("llava", input_path)
    assert sample.data["0.png"] == (folder / "inside.png").read_bytes()
    with pytest.raises(DataError, match=rf"outside the image folder {re.escape(str(other.resolve()))} "):
        build_read("llava", input_path, image_folder=other)
