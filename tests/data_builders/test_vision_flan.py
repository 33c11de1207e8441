"""Vision-Flan builder: both row layouts, unique sample ids for repeated row ids, task names, named errors."""
from __future__ import annotations

from collections import Counter

import pytest

from mmtune.errors import DataError


def annotation_row(row_id: str, task: str, question: str, answer: str) -> dict:
    """A row of annotation_191-task_1k.json (LLaVA-style turns, no placeholder)."""
    return {"id": row_id, "image": f"images_191task_1k/{task}/{row_id}.jpg", "task_name": task,
            "conversations": [{"from": "human", "value": question}, {"from": "gpt", "value": answer}]}


def test_rows_of_both_layouts_become_one_turn_image_samples(build_read, write_json, image_file, tmp_path):
    for task in ("VQA-E+image_question_answer", "CLEVR_CoGenT+VQA_context"):
        (tmp_path / "images_191task_1k" / task).mkdir(parents=True)
    vqa = image_file("images_191task_1k/VQA-E+image_question_answer/7.jpg", "JPEG")
    clevr = image_file("images_191task_1k/CLEVR_CoGenT+VQA_context/7.jpg", "JPEG")
    rows = [annotation_row("7", "VQA-E+image_question_answer", "What is on the table?", "A cup."),
            annotation_row("7", "CLEVR_CoGenT+VQA_context", "How many cubes?", "Two."),
            {"id": "9", "image": "images_191task_1k/CLEVR_CoGenT+VQA_context/7.jpg",
             "instruction": "Count the <image> spheres.", "target": "Three."}]
    report, samples = build_read("vision-flan", write_json("annotation_191-task_1k.json", rows))
    assert report.train == 3
    assert [s.id for s in samples] == ["7/0", "7/1", "9/2"]  # row ids repeat across tasks
    assert [s.task for s in samples] == ["VQA-E+image_question_answer", "CLEVR_CoGenT+VQA_context", ""]
    assert [[(m.role, m.content) for m in s.messages] for s in samples] == [
        [("user", "<image>\nWhat is on the table?"), ("assistant", "A cup.")],
        [("user", "<image>\nHow many cubes?"), ("assistant", "Two.")],
        [("user", "Count the <image> spheres."), ("assistant", "Three.")]]
    assert [s.data["0.jpg"] for s in samples] == [vqa.read_bytes(), clevr.read_bytes(), clevr.read_bytes()]


@pytest.mark.parametrize("row, match, reason", [
    ({"id": "n", "instruction": "q", "target": "a"}, r"record 1 \(line \d+\) id 'n' field image: missing",
     "missing_field"),
    ({"id": "t", "image": "a.png", "instruction": "q"}, r"id 't' field target: missing", "missing_field"),
    ({"id": "c", "image": "a.png", "conversations": [{"from": "robot", "value": "q"}]},
     r"id 'c' field conversations\[0\]\.from: unknown role 'robot'", "unknown_role"),
    ({"id": "g", "image": "gone.png", "instruction": "q", "target": "a"},
     r"vf\.json record 1 \(line \d+\) id 'g' field image: image file 'gone\.png' not found", "missing_media"),
])
def test_bad_rows_name_file_record_and_field_or_are_counted(build_read, write_json, image_file, row, match, reason):
    image_file("a.png")
    path = write_json("vf.json", [{"id": "ok", "image": "a.png", "instruction": "q", "target": "a"}, row])
    with pytest.raises(DataError, match=match):
        build_read("vision-flan", path)
    report, samples = build_read("vision-flan", path, on_error="skip")
    assert [s.id for s in samples] == ["ok/0"]
    assert report.skipped == Counter({reason: 1})
