"""Video-chat builder: Video-ChatGPT q/a rows found by video id, multi-turn rows, `<video>` placeholders, errors."""
from __future__ import annotations

from collections import Counter

import pytest

from mmtune.errors import DataError


def write_video(tmp_path, name: str) -> bytes:
    data = f"container bytes of {name}".encode()  # decoded at load time, not at build time
    (tmp_path / name).write_bytes(data)
    return data


def test_question_answer_rows_find_their_video_by_id(build_read, write_json, tmp_path):
    (tmp_path / "videos").mkdir()
    mkv, mp4 = write_video(tmp_path, "videos/v_abc.mkv"), write_video(tmp_path, "videos/v_def.mp4")
    rows = [{"video_id": "v_abc", "q": "What happens first?", "a": "A man pours batter."},
            {"video_id": "v_def.mp4", "q": "Describe <video> briefly.", "a": "A dog runs."}]
    report, (first, second) = build_read("video-chat", write_json("VideoInstruct100K.json", rows),
                                         image_folder=tmp_path / "videos")
    assert report.train == 2
    assert (first.id, [(m.kind, m.member) for m in first.media]) == ("v_abc", [("video", "0.mkv")])
    assert [(m.role, m.content) for m in first.messages] == [("user", "<video>\nWhat happens first?"),
                                                             ("assistant", "A man pours batter.")]
    assert (first.data["0.mkv"], second.data["0.mp4"]) == (mkv, mp4)
    assert second.messages[0].content == "Describe <video> briefly."


def test_conversation_rows_keep_their_placeholder(build_read, write_json, tmp_path):
    data = write_video(tmp_path, "clip.webm")
    turns = [{"from": "human", "value": "Watch this.\n<video>"}, {"from": "gpt", "value": "Done."},
             {"from": "human", "value": "Any cats?"}, {"from": "gpt", "value": "One."}]
    _, [sample] = build_read("video-chat", write_json("chat.jsonl", [{"video": "clip.webm", "conversations": turns}],
                                                      lines=True))
    assert [m.content for m in sample.messages] == [t["value"] for t in turns]
    assert sample.data["0.webm"] == data


@pytest.mark.parametrize("row, match, reason", [
    ({"id": "n", "q": "q", "a": "a"}, r"record 1 \(line \d+\) id 'n' field video: missing", "missing_field"),
    ({"video_id": "gone", "q": "q", "a": "a"},
     r"vc\.json record 1 \(line \d+\) id 'gone' field video_id: no video file for 'gone' in .* \(looked for "
     r"gone\.mp4, gone\.mkv, gone\.webm, gone\.avi, gone\.mov\)", "missing_media"),
    ({"video_id": "../escape", "q": "q", "a": "a"},
     r"id '\.\./escape' field video_id: media path '\.\./escape\.mp4' is outside the image folder",
     "media_outside_folder"),
    ({"video_id": "ok", "q": "q"}, r"id 'ok' field a: missing", "missing_field"),
    ({"video_id": "ok", "q": "<video> and <video>", "a": "a"},
     r"field q: 2 placeholder\(s\) \[<video>, <video>\] but 1 media item\(s\) \[<video>\]", "placeholder_mismatch"),
])
def test_bad_rows_name_file_record_and_field_or_are_counted(build_read, write_json, tmp_path, row, match, reason):
    (tmp_path / "data").mkdir()
    write_video(tmp_path, "data/ok.avi")
    write_video(tmp_path, "escape.mp4")
    path = write_json("data/vc.json", [{"video_id": "ok", "q": "q", "a": "a"}, row])
    with pytest.raises(DataError, match=match):
        build_read("video-chat", path)
    report, samples = build_read("video-chat", path, on_error="skip")
    assert [s.id for s in samples] == ["ok"]
    assert report.skipped == Counter({reason: 1})
