"""LAMM builder: 2D rows with an image, 3D rows with a point cloud (`<points>`), placeholders prepended, ids."""
from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from mmtune.errors import DataError


def turns(question: str, answer: str) -> list[dict]:
    return [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]


def test_2d_and_3d_rows(build_read, write_json, image_file, tmp_path):
    image = image_file("coco.jpg", "JPEG")
    (tmp_path / "3RScan").mkdir()
    cloud = tmp_path / "3RScan" / "scene.npy"
    np.save(cloud, np.random.default_rng(0).random((64, 6), dtype=np.float32))
    rows = [{"id": "coco_1", "image": "coco.jpg", "task_type": "VQA", "conversations": turns("What is it?", "A box.")},
            {"pcl": "3RScan/scene.npy", "task_type": "Detection", "src_dataset": "3RScan", "src_id": "scene",
             "conversations": turns("List the objects.", "A chair.") + turns("Where is it?", "By the wall.")}]
    report, (flat, scene) = build_read("lamm", write_json("LAMM_instruct.json", rows))
    assert report.train == 2
    assert (flat.id, flat.task, flat.messages[0].content) == ("coco_1", "VQA", "<image>\nWhat is it?")
    assert flat.data["0.jpg"] == image.read_bytes()
    assert (scene.id, scene.task) == ("3RScan/scene", "Detection")
    assert [m.content for m in scene.messages] == ["<points>\nList the objects.", "A chair.", "Where is it?",
                                                   "By the wall."]
    assert [(m.kind, m.member) for m in scene.media] == [("points", "0.npy")]
    assert scene.data["0.npy"] == cloud.read_bytes()


@pytest.mark.parametrize("row, match, reason", [
    ({"id": "none", "conversations": turns("q", "a")},
     r"lamm\.json record 1 \(line \d+\) id 'none' field image: missing \(a LAMM row names an image or a point "
     r"cloud in pcl\)", "missing_field"),
    ({"id": "gone", "pcl": "gone.npy", "conversations": turns("q", "a")},
     r"id 'gone' field pcl: points file 'gone\.npy' not found", "missing_media"),
    ({"id": "wrong", "pcl": "a.png", "conversations": turns("<image>\nq", "a")},
     r"id 'wrong' field conversations: 1 placeholder\(s\) \[<image>\] but 1 media item\(s\) \[<points>\]",
     "placeholder_mismatch"),
    ({"id": "empty", "image": "a.png", "conversations": []}, r"id 'empty' field conversations: empty conversation",
     "empty_conversation"),
])
def test_bad_rows_name_file_record_and_field_or_are_counted(build_read, write_json, image_file, row, match, reason):
    image_file("a.png")
    path = write_json("lamm.json", [{"id": "ok", "image": "a.png", "conversations": turns("q", "a")}, row])
    with pytest.raises(DataError, match=match):
        build_read("lamm", path)
    report, samples = build_read("lamm", path, on_error="skip")
    assert [s.id for s in samples] == ["ok"]
    assert report.skipped == Counter({reason: 1})
