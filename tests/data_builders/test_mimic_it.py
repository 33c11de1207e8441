"""MIMIC-IT builder: instructions with base64 images beside them, related instructions folded in as earlier turns,
shared images shown once, errors naming file, instruction and field (or counted skips)."""
from __future__ import annotations

import base64
import json
import sys
from collections import Counter

import pytest

from mmtune.errors import DataError


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def instruction(text: str, answer: str, image_ids: list[str], related: list[str]) -> dict:
    return {"instruction": text, "answer": answer, "image_ids": image_ids, "rel_ins_ids": related}


@pytest.fixture
def images(image_file) -> dict[str, bytes]:
    return {"LA_IMG_1": image_file("one.png").read_bytes(), "LA_IMG_2": image_file("two.jpg", "JPEG").read_bytes()}


def write_mimic(write_json, data: dict, images: dict[str, str], name: str = "LA") -> object:
    write_json(f"{name}.json", images)
    return write_json(f"{name}_instructions.json", {"meta": {"version": "0.0.1"}, "data": data})


def test_in_context_examples_come_first_each_with_its_own_image(build_read, write_json, images):
    data = {"LA_INS_1": instruction("What is red?", "The square.", ["LA_IMG_1"], ["LA_INS_1", "LA_INS_2"]),
            "LA_INS_2": instruction("And here?", "Nothing.", ["LA_IMG_2"], ["LA_INS_1", "LA_INS_2"])}
    path = write_mimic(write_json, data, {k: b64(v) for k, v in images.items()})
    report, (first, second) = build_read("mimic-it", path)
    assert report.train == 2 and (first.id, second.id) == ("LA_INS_1", "LA_INS_2")
    assert [(m.role, m.content) for m in first.messages] == [
        ("user", "<image>\nAnd here?"), ("assistant", "Nothing."),
        ("user", "<image>\nWhat is red?"), ("assistant", "The square.")]
    assert [m.content for m in second.messages] == ["<image>\nWhat is red?", "The square.", "<image>\nAnd here?",
                                                    "Nothing."]
    assert [(m.member, second.data[m.member]) for m in second.media] == [("0.png", images["LA_IMG_1"]),
                                                                        ("1.jpg", images["LA_IMG_2"])]


def test_frames_shared_by_an_episode_are_shown_once_in_order(build_read, write_json, images):
    frames = ["LA_IMG_2", "LA_IMG_1", "LA_IMG_2"]
    data = {"DC_1": instruction("What happens?", "A square appears.", frames, []),
            "DC_2": instruction("What colour is it?", "Red.", frames[:2], ["DC_1"])}
    path = write_mimic(write_json, data, {k: b64(v) for k, v in images.items()}, name="DC")
    _, (single, episode) = build_read("mimic-it", path)
    assert single.messages[0].content == "<image>\n<image>\nWhat happens?"
    assert [m.content for m in episode.messages] == ["<image>\n<image>\nWhat happens?", "A square appears.",
                                                     "What colour is it?", "Red."]
    assert [episode.data[m.member] for m in episode.media] == [images["LA_IMG_2"], images["LA_IMG_1"]]


@pytest.mark.parametrize("entry, match, reason", [
    (instruction("q", "a", ["LA_IMG_1"], ["LA_NOPE"]),
     r"record 1 \(line 14\) id 'LA_BAD' field rel_ins_ids\[0\]: related instruction 'LA_NOPE' is not in data",
     "missing_field"),
    (instruction("q", "a", ["LA_IMG_1"], ["LA_NO_ANSWER"]), r"id 'LA_BAD' field data\.LA_NO_ANSWER\.answer: missing",
     "missing_field"),
    ({"instruction": "q", "image_ids": []}, r"id 'LA_BAD' field answer: missing", "missing_field"),
    (instruction("q", "a", ["LA_IMG_1", 7], []), r"field image_ids\[1\]: expected an id string, got int",
     "wrong_type"),
    (instruction("q", "a", ["LA_IMG_9"], []),
     r"LA_instructions\.json record 1 \(line 14\) id 'LA_BAD' field image_ids\[0\]: image id 'LA_IMG_9' is not in "
     r".*LA\.json", "missing_media"),
    (instruction("q", "a", ["LA_BASE64"], []), r"field image_ids\[0\]: image 'LA_BASE64' in .*LA\.json is not valid "
                                                r"base64", "corrupt_media"),
    (instruction("q", "a", ["LA_NOT_IMAGE"], []), r"field image_ids\[0\]: image file LA_NOT_IMAGE does not decode",
     "corrupt_media"),
])
def test_bad_instructions_name_file_record_and_field_or_are_counted(build_read, write_json, images, entry, match,
                                                                    reason):
    data = {"LA_OK": instruction("q", "a", ["LA_IMG_1"], []), "LA_BAD": entry,
            "LA_NO_ANSWER": {"instruction": "q", "image_ids": []}}
    stored = {"LA_IMG_1": b64(images["LA_IMG_1"]), "LA_BASE64": "not base64!", "LA_NOT_IMAGE": b64(b"plain text")}
    path = write_mimic(write_json, data, stored)
    with pytest.raises(DataError, match=match):
        build_read("mimic-it", path)
    report, samples = build_read("mimic-it", path, on_error="skip")
    assert [s.id for s in samples] == ["LA_OK"]
    assert report.skipped == Counter([reason, "missing_field"])  # LA_NO_ANSWER is skipped too


def test_file_level_problems_name_the_file(build_read, write_json, tmp_path):
    data = {"data": {}}
    with pytest.raises(DataError, match=r"LA\.json: a MIMIC-IT instruction file is named XX_instructions\.json"):
        build_read("mimic-it", write_json("LA.json", data))
    with pytest.raises(DataError, match=r"SD_instructions\.json: its images file .*SD\.json \(or SD\.parquet\) not "
                                        r"found"):
        build_read("mimic-it", write_json("SD_instructions.json", data))
    write_json("CGD.json", [])
    with pytest.raises(DataError, match=r"CGD\.json: expected a JSON object of image id -> base64 string, malformed "
                                        r"at byte 0"):
        build_read("mimic-it", write_json("CGD_instructions.json", data))
    (tmp_path / "VST.json").write_text('{"ok": "AAAA", "bad\\q": "AAAA"}')
    with pytest.raises(DataError, match=r"VST\.json: malformed image id at byte 16 \(Invalid \\escape"):
        build_read("mimic-it", write_json("VST_instructions.json", data))
    write_json("SN.json", {})
    with pytest.raises(DataError, match=r"SN_instructions\.json: field data: expected an object"):
        build_read("mimic-it", write_json("SN_instructions.json", {"meta": {}}))


def write_parquet(path, columns: dict[str, list], index: str | None = None, row_group_size: int = 2):
    """A parquet file as pandas' `DataFrame.to_parquet` writes one: `index` names the column its metadata calls
    the index."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    table = pa.table(columns)
    if index is not None:
        table = table.replace_schema_metadata({"pandas": json.dumps({"index_columns": [index], "columns": []})})
    pq.write_table(table, path, row_group_size=row_group_size)
    return path


@pytest.mark.parametrize("layout", ["pandas index", "id column"])
def test_parquet_images_build_the_same_samples_as_json(build_read, write_json, tmp_path, images, layout):
    data = {"LA_INS_1": instruction("What is red?", "The square.", ["LA_IMG_1"], ["LA_INS_2"]),
            "LA_INS_2": instruction("And here?", "Nothing.", ["LA_IMG_2", "LA_IMG_3"], [])}
    stored = {**{k: b64(v) for k, v in images.items()}, "LA_IMG_3": b64(images["LA_IMG_1"])}
    _, from_json = build_read("mimic-it", write_mimic(write_json, data, stored))
    (tmp_path / "LA.json").unlink()
    id_column = "__index_level_0__" if layout == "pandas index" else "image_id"
    # three images in row groups of two: the second group is read after the first
    write_parquet(tmp_path / "LA.parquet", {"base64": list(stored.values()), id_column: list(stored)},
                  index=id_column if layout == "pandas index" else None)
    _, from_parquet = build_read("mimic-it", tmp_path / "LA_instructions.json")
    assert [s.to_json() for s in from_parquet] == [s.to_json() for s in from_json]
    assert [s.data for s in from_parquet] == [s.data for s in from_json]


@pytest.mark.parametrize("value, match", [("not base64!", r"image 'LA_BAD_IMG' in .*LA\.parquet is not valid base64"),
                                          (None, r"image 'LA_BAD_IMG' in .*LA\.parquet is None, not a base64 string")])
def test_a_bad_parquet_image_names_file_record_and_field_or_is_counted(build_read, write_json, tmp_path, images,
                                                                       value, match):
    data = {"LA_OK": instruction("q", "a", ["LA_IMG_1"], []), "LA_BAD": instruction("q", "a", ["LA_BAD_IMG"], [])}
    path = write_json("LA_instructions.json", {"meta": {}, "data": data})
    write_parquet(tmp_path / "LA.parquet", {"image_id": ["LA_IMG_1", "LA_BAD_IMG"],
                                            "base64": [b64(images["LA_IMG_1"]), value]})
    with pytest.raises(DataError, match=r"LA_instructions\.json record 1 \(line \d+\) id 'LA_BAD' field "
                                        r"image_ids\[0\]: " + match):
        build_read("mimic-it", path)
    report, samples = build_read("mimic-it", path, on_error="skip")
    assert [s.id for s in samples] == ["LA_OK"] and report.skipped == Counter(["corrupt_media"])


@pytest.mark.parametrize("columns, match", [
    ({"base64": ["AAAA"], "a": ["x"], "b": ["y"]}, r"LA\.parquet: expected image ids .* found columns \['base64', "
                                                   r"'a', 'b'\]"),
    ({"image": ["AAAA"], "image_id": ["x"]}, r"LA\.parquet: expected image ids .* found columns"),
    ({"base64": ["AAAA", "AAAA"], "image_id": ["x", "x"]}, r"LA\.parquet: row group 0 row 1 column 'image_id': "
                                                           r"image id 'x' appears twice"),
    ({"base64": ["AAAA"], "image_id": [7]}, r"LA\.parquet: row group 0 row 0 column 'image_id': image id 7 is not"),
])
def test_parquet_file_problems_name_the_file(build_read, write_json, tmp_path, columns, match):
    path = write_json("LA_instructions.json", {"meta": {}, "data": {}})
    write_parquet(tmp_path / "LA.parquet", columns)
    with pytest.raises(DataError, match=match):
        build_read("mimic-it", path)
    (tmp_path / "LA.parquet").write_bytes(b"PAR1 cut short")
    with pytest.raises(DataError, match=r"LA\.parquet: not a readable parquet file"):
        build_read("mimic-it", path)


def test_parquet_without_pyarrow_says_what_to_install(build_read, write_json, tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)  # `import pyarrow.parquet` fails
    path = write_json("LA_instructions.json", {"meta": {}, "data": {}})
    (tmp_path / "LA.parquet").write_bytes(b"PAR1")
    with pytest.raises(DataError, match=r"LA\.parquet: MIMIC-IT parquet images need pyarrow \(pip install "
                                        r"'mmtune\[parquet\]'\); or give the images as LA\.json"):
        build_read("mimic-it", path)
