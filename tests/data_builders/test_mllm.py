"""Role/content (mllm) builder: several images or videos per sample, media in placeholder order."""
from __future__ import annotations

import json

import pytest

from mmtune.errors import DataError
from tests.helpers import SAMPLES


def test_real_mllm_demo_round_trips(build_read):
    path = SAMPLES / "multimodal" / "mllm_demo.json"
    source = json.loads(path.read_text())
    report, samples = build_read("mllm", path)
    assert report.train == len(samples) == 6
    for record, sample in zip(source, samples):
        assert [(m.role, m.content) for m in sample.messages] == [(t["role"], t["content"]) for t in record["messages"]]
        assert [m.member for m in sample.media] == [f"{i}.jpg" for i in range(len(record["images"]))]
        assert [sample.data[m.member] for m in sample.media] == [(path.parent / p).read_bytes()
                                                                 for p in record["images"]]
    assert len(samples[0].media) == 2  # "<image>Who are they?" ... "What are they doing?<image>"


def test_real_video_demo_keeps_container_bytes(build_read):
    path = SAMPLES / "multimodal" / "mllm_video_demo.json"
    _, samples = build_read("mllm", path)
    assert [[(m.kind, m.member) for m in s.media] for s in samples] == [[("video", "0.mp4")], [("video", "0.avi")],
                                                                        [("video", "0.mp4")]]
    assert samples[1].data["0.avi"] == (path.parent / "mllm_demo_data" / "2.avi").read_bytes()


def test_images_and_videos_interleave_in_placeholder_order(build_read, write_json, image_file, tmp_path):
    image_file("a.png")
    image_file("b.jpg", "JPEG")
    (tmp_path / "v.mp4").write_bytes(b"not decoded at build time")
    messages = [{"role": "system", "content": "Compare."}, {"role": "user", "content": "<video> vs <image>"},
                {"role": "assistant", "content": "Different."}, {"role": "user", "content": "And <image>?"},
                {"role": "assistant", "content": "Same."}]
    path = write_json("m.json", [{"messages": messages, "images": ["b.jpg", "a.png"], "videos": ["v.mp4"]}])
    _, [sample] = build_read("mllm", path)
    assert [(m.kind, m.member) for m in sample.media] == [("video", "0.mp4"), ("image", "1.jpg"), ("image", "2.png")]
    assert sample.data["1.jpg"] == (tmp_path / "b.jpg").read_bytes()


@pytest.mark.parametrize("record, match", [
    ({"messages": [{"role": "user", "content": "<image><image>"}, {"role": "assistant", "content": "x"}],
      "images": ["a.png"]},
     r"m\.json record 0 \(line \d+\) field images: 2 <image> placeholder\(s\) in messages but 1 path\(s\) in images"),
    ({"messages": [{"role": "user", "content": "hi"}, {"role": "assistant", "content": "x"}], "videos": ["v.mp4"]},
     r"record 0 \(line \d+\) field videos: 0 <video> placeholder\(s\) in messages but 1 path\(s\) in videos"),
    ({"messages": [{"role": "user", "content": "<points>"}, {"role": "assistant", "content": "x"}]},
     r"record 0 \(line \d+\) field messages: <points> placeholders are not part of this format"),
    ({"messages": [{"role": "user", "content": "<image>"}, {"role": "assistant", "content": "x"}], "images": [3]},
     r"record 0 \(line \d+\) field images\[0\]: expected a path string, got int"),
    ({"messages": [{"role": "user", "content": "q"}, {"role": "critic", "content": "x"}]},
     r"record 0 \(line \d+\) field messages\[1\]\.role: unknown role 'critic'"),
    ({"messages": [{"role": "user", "content": ["a", "list"]}, {"role": "assistant", "content": "x"}]},
     r"record 0 \(line \d+\) field messages\[0\]\.content: expected a string, got list"),
])
def test_bad_records_name_the_field(build_read, write_json, image_file, record, match):
    image_file("a.png")
    with pytest.raises(DataError, match=match):
        build_read("mllm", write_json("m.json", [record]))
