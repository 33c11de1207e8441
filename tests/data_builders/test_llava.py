"""LLaVA builder: one image per record, original bytes kept, `<image>` where the text puts it (or prepended)."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from mmtune.errors import DataError
from tests.helpers import SAMPLES


def chat(question: str, answer: str = "An answer.") -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def test_real_llava_demo_round_trips_with_original_bytes(build_read):
    path = SAMPLES / "multimodal" / "llava_demo.json"
    source = json.loads(path.read_text())
    report, samples = build_read("llava", path, allow_outside_media=True)  # two images are in ../images
    assert report.train == len(samples) == len(source) == 6
    for record, sample in zip(source, samples):
        assert sample.id == record["id"]
        assert [m.content for m in sample.messages] == [t["value"] for t in record["conversations"]]
        assert [(m.kind, m.member) for m in sample.media] == [("image", "0.jpg")]
        assert sample.data["0.jpg"] == (path.parent / record["image"]).read_bytes()
    waterview = samples[-1]
    assert waterview.id == "llava_example_waterview"
    assert waterview.messages[0].content.endswith("\n<image>")  # after the text, kept there


def test_real_llava_demo_skips_the_images_outside_its_folder_by_default(build_read):
    path = SAMPLES / "multimodal" / "llava_demo.json"
    source = json.loads(path.read_text())
    inside = [r["id"] for r in source if not r["image"].startswith("../")]
    assert 0 < len(inside) < len(source)
    report, samples = build_read("llava", path, on_error="skip")
    assert [s.id for s in samples] == inside
    assert report.skipped == Counter({"media_outside_folder": len(source) - len(inside)})
    assert "media path '../images/extreme_ironing.jpg' is outside the image folder" in report.first_errors[
        "media_outside_folder"]


def test_image_folder_text_only_records_and_real_format(build_read, write_json, image_file, tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    png, jpeg = image_file("imgs/a.png"), image_file("imgs/b.jpeg", "JPEG")
    path = write_json("l.json", [{"id": "p", "image": "a.png", "conversations": chat("<image>\nWhat colour?")},
                                 {"id": "j", "image": "b.jpeg", "conversations": chat("Describe <image> please.")},
                                 {"id": "t", "conversations": chat("No picture here.")}])
    _, (p, j, t) = build_read("llava", path, image_folder=folder)
    assert (p.media[0].member, p.data["0.png"]) == ("0.png", png.read_bytes())
    assert (j.media[0].member, j.data["0.jpg"]) == ("0.jpg", jpeg.read_bytes())
    assert t.media == [] and t.data == {}


def test_missing_placeholder_is_prepended_to_the_first_user_turn(build_read, write_json, image_file):
    image_file("a.png")
    turns = [{"from": "system", "value": "Look closely."}, *chat("What is it?"), *chat("Sure?", "Yes.")]
    _, [sample] = build_read("llava", write_json("l.json", [{"id": "x", "image": "a.png", "conversations": turns}]))
    assert [m.content for m in sample.messages] == ["Look closely.", "<image>\nWhat is it?", "An answer.", "Sure?",
                                                    "Yes."]


@pytest.mark.parametrize("record, match, reason", [
    ({"id": "m1", "image": "missing.jpg", "conversations": chat("<image>\nHi")},
     r"l\.json record 1 \(line \d+\) id 'm1' field image: image file 'missing\.jpg' not found "
     r"\(looked at .*missing\.jpg\)",
     "missing_media"),
    ({"id": "m2", "image": "garbage.jpg", "conversations": chat("<image>\nHi")},
     r"record 1 \(line \d+\) id 'm2' field image: image file .*garbage\.jpg does not decode", "corrupt_media"),
    ({"id": "m3", "image": "a.png", "conversations": chat("<image> and <image>")},
     r"id 'm3' field conversations: 2 placeholder\(s\) \[<image>, <image>\] but 1 media item\(s\) \[<image>\]",
     "placeholder_mismatch"),
    ({"id": "m4", "conversations": chat("<image>\nNo image given")},
     r"id 'm4' field conversations: 1 placeholder\(s\) \[<image>\] but 0 media item\(s\) \[\]", "placeholder_mismatch"),
    ({"id": "m5", "image": "a.png", "conversations": chat("<image> then <video>")},
     r"id 'm5' field conversations: 2 placeholder\(s\) \[<image>, <video>\]", "placeholder_mismatch"),
    ({"id": "m6", "image": "a.png", "conversations": [{"from": "gpt", "value": "No user turn."}]},
     r"id 'm6' field conversations: 0 placeholder\(s\) \[\] but 1 media item\(s\)", "placeholder_mismatch"),
])
def test_media_errors_name_record_and_path_or_are_counted(build_read, write_json, image_file, tmp_path, record,
                                                          match, reason):
    image_file("a.png")
    (tmp_path / "garbage.jpg").write_bytes(b"\xff\xd8\xff\xe0 this is not a jpeg")
    path = write_json("l.json", [{"id": "ok", "image": "a.png", "conversations": chat("<image>")}, record])
    with pytest.raises(DataError, match=match):
        build_read("llava", path)
    report, samples = build_read("llava", path, on_error="skip")
    assert [s.id for s in samples] == ["ok"]
    assert report.skipped == Counter({reason: 1})
