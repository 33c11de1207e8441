"""Video decoding with decord on real files: frame sampling, odd sizes and containers, corrupt and truncated files."""
import numpy as np
import pytest

from mmtune.data.media import VideoLoader, decode_video, frame_positions
from mmtune.errors import DataError
from tests.helpers import SAMPLES

VIDEOS = [SAMPLES / "video" / "flipping_a_pancake.mkv", SAMPLES / "multimodal" / "mllm_demo_data" / "1.mp4",
          SAMPLES / "multimodal" / "mllm_demo_data" / "2.avi"]


def test_uniform_sampling_spans_the_video():
    assert frame_positions(310, 30.0, 4).tolist() == [0, 103, 206, 309]


def test_fps_sampling_takes_frames_at_the_rate_and_caps_them():
    assert frame_positions(90, 30.0, 8, fps=1.0).tolist() == [0, 0, 30, 30, 30, 30, 60, 60]  # 3 s: repeats
    assert frame_positions(3000, 30.0, 4, fps=1.0).tolist() == [0, 990, 1980, 2970]  # 100 s: spread over 4


def test_short_video_repeats_frames_to_the_fixed_count():
    assert frame_positions(3, 25.0, 5).tolist() == [0, 0, 1, 2, 2]


@pytest.mark.parametrize("path", VIDEOS, ids=lambda p: p.name)
def test_real_videos_decode_to_the_requested_frames(path):
    frames = decode_video(path.read_bytes(), path.name, frames=4)
    assert len(frames) == 4 and all(f.mode == "RGB" for f in frames)
    assert frames[0].size in {(426, 240), (640, 360), (320, 240)}
    assert np.asarray(frames[0]).std() > 5  # a picture, not a blank frame


def test_loader_applies_the_frame_transform():
    path = VIDEOS[0]
    loaded = VideoLoader(lambda image: __import__("torch").zeros(3, 8, 8), frames=3, fps=0)(path.read_bytes(), "v")
    assert loaded.shape == (3, 3, 8, 8)


def test_truncated_video_names_the_member():
    data = VIDEOS[1].read_bytes()
    with pytest.raises(DataError, match=r"shard-0\.tar sample 'k' member '0\.mp4': cannot decode video"):
        decode_video(data[: len(data) // 2], "shard-0.tar sample 'k' member '0.mp4'", frames=4)


def test_bytes_that_are_no_video_name_the_member():
    with pytest.raises(DataError, match=r"member '0\.mp4': cannot decode video \(700 bytes\)"):
        decode_video(b"garbage" * 100, "member '0.mp4'", frames=4)
