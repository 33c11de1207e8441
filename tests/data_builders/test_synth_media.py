"""Pins the video, point-cloud and multi-image generators of the demos: answers agree with what the media show once
read back through mmtune's own decoders, streams are deterministic, and held-out media stay out of training."""
import io

import numpy as np
import pytest
from PIL import Image

from data_builders.synth import multi_image, points, video
from data_builders.synth.shapes import BACKGROUND, COLORS, media_digest
from mmtune.data.media import decode_video
from mmtune.data.points import PointsLoader, normalise, read_points
from mmtune.data.sample import validate
from mmtune.data.stream import ShardStream
from mmtune.errors import ConfigError

COLOUR_NAMES = {rgb: name for name, rgb in COLORS.items()}


def read(shards):
    return [item.value for item in ShardStream(shards, transform=lambda s: s, shuffle=False)]


def centre(frame: Image.Image) -> np.ndarray:
    """(x, y) centre of the pixels far from the white background (JPEG blurs the edges a little)."""
    ys, xs = np.nonzero(np.abs(np.asarray(frame, int) - 255).max(-1) > 80)
    return np.array([xs.mean(), ys.mean()])


def nearest_colour(frame: Image.Image) -> str:
    """The palette colour nearest to the shape's median pixel (JPEG shifts colours a little)."""
    pixels = np.asarray(frame, int).reshape(-1, 3)
    median = np.median(pixels[np.abs(pixels - 255).max(-1) > 80], axis=0)
    return min(COLORS, key=lambda name: np.abs(np.array(COLORS[name]) - median).sum())


def test_video_colours_agree_with_the_decoded_frames():
    samples = list(video.generate(40, seed=0))
    for s in samples:
        validate(s)
        assert s.messages[0].content.startswith("<video>\n") and s.media[0].kind == "video"
        frames = decode_video(s.data["video.avi"], s.id, video.FRAMES)  # every frame, in order
        assert frames[0].size == (video.FRAME_SIZE, video.FRAME_SIZE)
        seen = {"first": nearest_colour(frames[0]), "last": nearest_colour(frames[-1])}
        assert seen["first"] != seen["last"], s.id
        for question, answer in zip(s.messages[::2], s.messages[1::2]):
            task = next(t for t, asked in video.QUESTIONS.items() if question.content.endswith(asked))
            assert answer.content == seen[task], s.id
        moves = np.diff([centre(f) for f in frames], axis=0)
        axis = np.abs(moves).sum(0).argmax()
        assert (np.abs(moves[:, axis]) > 1).all() and (np.sign(moves[:, axis]) == np.sign(moves[0, axis])).all()
        assert np.abs(moves[:, 1 - axis]).max() < 1, (s.id, moves)  # straight along one axis, at a steady pace
    assert {s.task for s in samples} == {"first", "last"}


def test_video_streams_are_deterministic_and_frames_count_is_checked():
    assert [s.data for s in video.generate(5, seed=3)] == [s.data for s in video.generate(5, seed=3)]
    with pytest.raises(ConfigError, match="frames >= 2"):
        list(video.generate(1, seed=0, frames=1))


def test_point_clouds_read_back_as_their_class():
    samples = list(points.generate(60, seed=0))
    assert {s.messages[-1].content for s in samples} == set(points.CLASSES)
    assert {s.media[0].member for s in samples} == {"cloud.npy", "cloud.ply"}  # both readers on the path
    for s in samples:
        validate(s)
        cloud = read_points(s.data[s.media[0].member], s.id)
        assert cloud.shape == (points.POINTS, 6)
        assert tuple(np.round(cloud[0, 3:] * 255).astype(int)) in COLOUR_NAMES  # one colour of the palette
        radius = np.linalg.norm(normalise(cloud)[:, :3], axis=1)
        if s.messages[-1].content == "sphere":  # stretched by at most 15% per axis, jittered by 2%
            assert radius.min() > 0.6, s.id
        if s.messages[-1].content == "torus":  # a hole in the middle
            assert radius.min() > 0.3, s.id
        assert PointsLoader(128)(s.data[s.media[0].member], s.id).shape == (128, 6)


def test_point_surfaces_are_what_they_say():
    rng = np.random.default_rng(0)
    sphere, cube = points.surface("sphere", 500, rng), points.surface("cube", 500, rng)
    assert np.allclose(np.linalg.norm(sphere, axis=1), 1)
    assert np.allclose(np.abs(cube).max(1), 1) and (np.abs(cube) <= 1).all()
    cylinder, cone = points.surface("cylinder", 2000, rng), points.surface("cone", 2000, rng)
    on_side = np.isclose(np.hypot(cylinder[:, 0], cylinder[:, 1]), 1)
    assert np.isclose(np.abs(cylinder[~on_side, 2]), 1).all() and 0.6 < on_side.mean() < 0.73  # 2/3 of the area
    lateral = cone[:, 2] > -1
    assert np.allclose(np.hypot(cone[lateral, 0], cone[lateral, 1]), (1 - cone[lateral, 2]) / 2)
    torus = points.surface("torus", 500, rng)
    assert torus.shape == (500, 3)
    assert np.allclose(np.hypot(np.hypot(torus[:, 0], torus[:, 1]) - 1, torus[:, 2]), 0.35)
    with pytest.raises(ConfigError, match="unknown shape 'pyramid'"):
        points.surface("pyramid", 5, rng)


def image_colour(png: bytes) -> str:
    pixels = np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).reshape(-1, 3)
    (colour,) = {tuple(int(v) for v in p) for p in pixels} - {BACKGROUND}
    return COLOUR_NAMES[colour]


@pytest.mark.parametrize("multi_turn", [False, True])
def test_multi_image_answers_agree_with_the_pixels(multi_turn):
    samples = list(multi_image.generate(200, seed=0, image_size=32, multi_turn=multi_turn))
    for s in samples:
        validate(s)
        assert s.messages[0].content.startswith("<image>\n" * 3) and [m.member for m in s.media] == \
            ["0.png", "1.png", "2.png"]
        colours = [image_colour(s.data[m.member]) for m in s.media]
        seen = {"shared": max(colours, key=colours.count), "odd": min(colours, key=colours.count)}
        assert sorted(map(colours.count, set(colours))) == [1, 2], s.id
        for question, answer in zip(s.messages[::2], s.messages[1::2]):
            task = next(t for t, asked in multi_image.QUESTIONS.items() if question.content.endswith(asked))
            assert answer.content == seen[task], s.id
    assert {s.task for s in samples} == ({"multi"} if multi_turn else {"shared", "odd"})
    odd_places = {[image_colour(s.data[m.member]) for m in s.media].index(s.messages[-1].content)
                  for s in samples if s.task == "odd"}
    assert multi_turn or odd_places == {0, 1, 2}


@pytest.mark.parametrize("module, chance", [(video, 1 / 6), (points, 1 / 5), (multi_image, 1 / 6)])
def test_demo_shards_hold_unseen_eval_media_and_chance(tmp_path, module, chance):
    out = module.write_demo_shards(tmp_path, n_train=30, n_eval=40, seed=1, shard_size=16)
    train, held_out = read(out["train"]), read(out["eval"])
    assert (len(out["train"]), len(train), len(held_out)) == (2, 30, 40)
    assert {media_digest(s) for s in train}.isdisjoint(media_digest(s) for s in held_out)
    assert all(len(s.messages) == 2 for s in held_out)
    assert abs(out["chance"] - chance) < 0.05  # the held-out questions' own mix
    with pytest.raises(ConfigError, match="already holds"):
        module.write_demo_shards(tmp_path, n_train=1, n_eval=1)
