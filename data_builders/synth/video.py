"""Synthetic videos for the video demo: one shape crosses the frame left, right, up or down, drawn frame by frame
with shapes.py and written as a real video file, an MJPEG AVI (JPEG frames in a RIFF container, as cameras write
them), which decord reads like any other. No video-writing library is needed.

The question is the direction of motion, which no single frame tells: the model must read the frames in order.
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
ANSWERS = {"direction": DIRECTIONS}
QUESTIONS = ("Which way does the shape move?", "In which direction is the shape moving?",
             "Where does the shape go?")
FRAME_SIZE = 64
"""Pixels a side. decord 0.6 mis-sizes the frames of some widths (16, 24 and 48 pixels fail), 64 reads back."""
FRAMES = 8
FPS = 4


def generate(n: int, seed: int, frames: int = FRAMES) -> Iterator[Sample]:
    """`n` samples, deterministic from `seed`: a direction question about a video of `frames` frames."""
    if n < 0 or frames < 2:
        raise ConfigError(f"synth video: n must be >= 0 and frames >= 2, got n={n}, frames={frames}")
    return itertools.islice(_stream(seed, frames), n)


def _stream(seed: int, frames: int) -> Iterator[Sample]:
    for i in itertools.count():
        rng = random.Random(f"video-{seed}-{i}")
        direction = rng.choice(DIRECTIONS)
        scenes = moving_shape(rng, direction, frames)
        video = mjpeg_avi([draw(scene, FRAME_SIZE) for scene in scenes], FPS)
        yield qa_sample(f"video-{seed}-{i:07d}", SOURCE, "direction", [(rng.choice(QUESTIONS), direction)],
                        [("video", "video.avi", video)])


def moving_shape(rng: random.Random, direction: str, frames: int) -> list[Scene]:
    """One scene per frame: a shape of 14-20 pixels that crosses at least a third of the frame in `direction`,
    at a constant speed, along a line drawn at random."""
    shape, color = rng.choice(SHAPES), rng.choice(tuple(COLORS))
    side = rng.randint(14, 20)
    far = FRAME_SIZE - side - 2
    start, end = rng.randint(2, 12), rng.randint(far - 10, far)
    if direction in ("left", "up"):
        start, end = end, start
    across = rng.randint(2, far)
    scenes = []
    for t in range(frames):
        along = round(start + (end - start) * t / (frames - 1))
        x, y = (along, across) if direction in ("left", "right") else (across, along)
        scenes.append(Scene(shape, color, ((x, y, x + side - 1, y + side - 1),), None))
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
