"""InstructPix2Pix builder: each triplet becomes an edit sample (input image placeholder + instruction, edited
image as target, original bytes kept); a missing column or image names the record."""
from __future__ import annotations

import pytest

from mmtune.errors import DataError


def test_triplets_become_edit_samples(build_read, write_json, image_file):
    source, edited = image_file("in.png"), image_file("out.jpg", "JPEG")
    path = write_json("edits.jsonl", [{"input_image": "in.png", "edit_prompt": "make it blue",
                                       "edited_image": "out.jpg"}], lines=True)
    report, samples = build_read("ip2p", path)
    assert report.train == 1
    sample = samples[0]
    assert [(m.role, m.content) for m in sample.messages] == [("user", "<image>\nmake it blue")]
    assert (sample.media[0].member, sample.target.member) == ("0.png", "1.jpg")
    assert sample.data["0.png"] == source.read_bytes() and sample.data["1.jpg"] == edited.read_bytes()


def test_missing_column_or_image_is_named(build_read, write_json, image_file):
    image_file("in.png")
    path = write_json("edits.jsonl", [{"input_image": "in.png", "edit_prompt": "x"},
                                      {"input_image": "in.png", "edit_prompt": "x", "edited_image": "gone.png"}],
                      lines=True)
    with pytest.raises(DataError, match=r"record 0 \(line 1\) field edited_image: missing; .*record 1 \(line 2\) "
                                        r"field edited_image: image file 'gone.png' not found"):
        build_read("ip2p", path, on_error="skip")
