"""Synthetic videos for the video demo: one shape crosses the frame left, right, up or down and changes colour once
on its way, drawn frame by frame with shapes.py and written as a real video file, an MJPEG AVI (JPEG frames in a
RIFF container, as cameras write them), which decord reads like any other. No video-writing library is needed.

The questions ask for the colour the shape has first, or last. Both colours are in the video, so only the order
of the frames tells them apart: a model blind to it could do no better than half right.
Sample i derives from `random.Random(f"video-{seed}-{i}")` alone.
"""
from __future__ import annotations

import io
import itertools
import random
import struct
from pathlib import Path
from typing import Iterator

from PIL import Image

from data_builders.synth.shapes import COLORS, SHAPES, Scene, draw, qa_sample, write_splits
from mmtune.data.sample import Sample
from mmtune.errors import ConfigError

SOURCE = "synth/video"
DIRECTIONS = ("left", "right", "up", "down")
ANSWERS = {"first": tuple(COLORS), "last": tuple(COLORS)}
QUESTIONS = {"first": ("Which color does the shape have first?", "What color is the shape at the start?"),
             "last": ("Which color does the shape have last?", "What color is the shape at the end?")}
FRAME_SIZE = 64
"""Pixels a side. decord 0.6 mis-sizes the frames of some widths (16, 24 and 48 pixels fail), 64 reads back."""
FRAMES = 8
FPS = 4


def generate(n: int, seed: int, frames: int = FRAMES) -> Iterator[Sample]:
    """`n` samples of `frames`-frame videos, deterministic from `seed`, each with one question: the first or the
    last colour (`task` names it). One, not both: a second question would be answered by "the other colour" from
    the first answer's text, which teaches nothing about time (multi-turn training stalled at 0.5 held out)."""
    if n < 0 or frames < 2:
        raise ConfigError(f"synth video: n must be >= 0 and frames >= 2, got n={n}, frames={frames}")
    return itertools.islice(_stream(seed, frames), n)


def _stream(seed: int, frames: int) -> Iterator[Sample]:
    for i in itertools.count():
        rng = random.Random(f"video-{seed}-{i}")
        scenes = moving_shape(rng, rng.choice(DIRECTIONS), frames)
        video = mjpeg_avi([draw(scene, FRAME_SIZE) for scene in scenes], FPS)
        task = rng.choice(tuple(QUESTIONS))
        answer = scenes[0].color if task == "first" else scenes[-1].color
        yield qa_sample(f"video-{seed}-{i:07d}", SOURCE, task, [(rng.choice(QUESTIONS[task]), answer)],
                        [("video", "video.avi", video)])


def moving_shape(rng: random.Random, direction: str, frames: int) -> list[Scene]:
    """One scene per frame: a shape of 24-32 pixels (several patches of a small vision tower) that crosses a
    quarter of the frame or more in `direction`, at a constant speed, along a line drawn at random, and turns from
    one colour to another after a frame drawn at random (so the first and the last frame differ)."""
    shape, (first, last) = rng.choice(SHAPES), rng.sample(tuple(COLORS), 2)
    change = rng.randint(1, frames - 1)
    side = rng.randint(24, 32)
    far = FRAME_SIZE - side - 2
    start, end = rng.randint(2, 8), rng.randint(far - 6, far)
    if direction in ("left", "up"):
        start, end = end, start
    across = rng.randint(2, far)
    scenes = []
    for t in range(frames):
        along = round(start + (end - start) * t / (frames - 1))
        x, y = (along, across) if direction in ("left", "right") else (across, along)
        scenes.append(Scene(shape, first if t < change else last, ((x, y, x + side - 1, y + side - 1),), None))
    return scenes


def mjpeg_avi(frames: list[Image.Image], fps: int, quality: int = 90) -> bytes:
    """An AVI file of one MJPEG video stream: a header list (main header, stream header, BITMAPINFOHEADER), the
    frames as `00dc` chunks and an `idx1` index marking each a key frame. Full-resolution chroma (4:4:4), so the
    colours of small shapes survive."""
    width, height = frames[0].size
    jpegs = []
    for frame in frames:
        buf = io.BytesIO()
        frame.save(buf, format="JPEG", quality=quality, subsampling=0)
        jpegs.append(buf.getvalue())
    largest = max(map(len, jpegs))
    main = struct.pack("<14I", round(1e6 / fps), largest * fps, 0, 0x10, len(frames), 0, 1, largest, width, height,
                       0, 0, 0, 0)  # 0x10: has an index
    stream = b"vidsMJPG" + struct.pack("<IHHIIIIIIiI4h", 0, 0, 0, 0, 1, fps, 0, len(frames), largest, -1, 0,
                                       0, 0, width, height)
    bitmap = struct.pack("<IiiHH4sIiiII", 40, width, height, 1, 24, b"MJPG", width * height * 3, 0, 0, 0, 0)
    header = _list(b"hdrl", _chunk(b"avih", main) + _list(b"strl", _chunk(b"strh", stream) + _chunk(b"strf", bitmap)))
    movie, index, offset = [], [], 4  # offsets count from the `movi` type code
    for jpeg in jpegs:
        chunk = _chunk(b"00dc", jpeg)
        index.append(b"00dc" + struct.pack("<III", 0x10, offset, len(jpeg)))  # 0x10: key frame
        movie.append(chunk)
        offset += len(chunk)
    body = header + _list(b"movi", b"".join(movie)) + _chunk(b"idx1", b"".join(index))
    return _chunk(b"RIFF", b"AVI " + body)


def _chunk(tag: bytes, payload: bytes) -> bytes:
    """A RIFF chunk: tag, little-endian size, payload padded to an even length."""
    return tag + struct.pack("<I", len(payload)) + payload + b"\0" * (len(payload) % 2)


def _list(kind: bytes, payload: bytes) -> bytes:
    return _chunk(b"LIST", kind + payload)


def write_demo_shards(out_dir: str | Path, n_train: int, n_eval: int, seed: int = 0, frames: int = FRAMES,
                      shard_size: int = 1000) -> dict:
    """`train-*.tar` and `eval-*.tar` (videos unseen in training) in `out_dir`, from streams seeded 2*seed and
    2*seed+1. Returns {"train": [paths], "eval": [paths], "chance": eval chance accuracy}."""
    splits = {"train": list(generate(n_train, 2 * seed, frames))}
    return write_splits(out_dir, splits, _stream(2 * seed + 1, frames), n_eval, ANSWERS, shard_size)
