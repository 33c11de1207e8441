"""Decode the media members of a shard sample into what encoders take (images, videos).

Images come back as RGB PIL images with their EXIF orientation applied (photos from phones are stored sideways and
annotators saw them upright). Bytes that do not decode raise DataError naming `where` (shard, key and member), so the
loader can skip and count the sample under `data.on_error: skip`, or stop with a message that finds it.
"""
from __future__ import annotations

import io
from typing import Callable

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from mmtune.errors import DataError


def decode_image(data: bytes, where: str) -> Image.Image:
    """Bytes of any format PIL reads -> RGB image, fully decoded (truncated files fail here, not in a worker later)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            return ImageOps.exif_transpose(image).convert("RGB")
    except UnidentifiedImageError:  # its own message names a BytesIO object, which finds nothing
        reason = "not an image in a format PIL reads"
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        reason = str(e)  # "image file is truncated" is an OSError; some plugins raise SyntaxError
    raise DataError(f"{where}: cannot decode image ({len(data)} bytes): {reason}")


class ImageLoader:
    """An image encoder's `preprocess`: bytes -> decoded RGB image -> its transform, as numpy (it crosses the
    DataLoader's worker queue by plain pickling, where a torch tensor would take a shared-memory segment of its own).
    A plain class so DataLoader workers can pickle it."""

    def __init__(self, transform: Callable):
        self.transform = transform

    def __call__(self, data: bytes, where: str) -> np.ndarray:
        return self.transform(decode_image(data, where)).numpy()


def frame_positions(total: int, avg_fps: float, frames: int, fps: float = 0.0) -> np.ndarray:
    """`frames` frame indices of a video of `total` frames: spread uniformly over the whole video (linspace), or,
    with `fps` > 0, over the frames taken at that rate from the start. A video with fewer candidates than `frames`
    repeats some, so every video costs the same LLM positions."""
    if fps > 0:
        step = max(avg_fps / fps, 1.0) if avg_fps > 0 else 1.0
        candidates = np.arange(0, total, step).round().astype(int).clip(max=total - 1)
    else:
        candidates = np.arange(total)
    return candidates[np.linspace(0, len(candidates) - 1, frames).round().astype(int)]


def decode_video(data: bytes, where: str, frames: int, fps: float = 0.0) -> list[Image.Image]:
    """Bytes of any container and codec decord (FFmpeg) reads -> `frames` RGB frames; audio streams are ignored.
    A file that does not open or whose frames do not decode raises DataError naming `where`."""
    import decord

    try:
        reader = decord.VideoReader(io.BytesIO(data), num_threads=1)
        total = len(reader)
        if total == 0:
            raise DataError(f"{where}: video has no frames ({len(data)} bytes)")
        picked = reader.get_batch(frame_positions(total, reader.get_avg_fps(), frames, fps).tolist()).asnumpy()
    except (decord.DECORDError, RuntimeError) as e:  # decord raises both for files FFmpeg cannot read
        raise DataError(f"{where}: cannot decode video ({len(data)} bytes): {str(e).splitlines()[0]}") from None
    return [Image.fromarray(frame) for frame in picked]


class VideoLoader:
    """A video encoder's `preprocess`: bytes -> sampled frames -> the frame tower's transform, [frames, 3, H, W]."""

    def __init__(self, transform: Callable, frames: int, fps: float):
        self.transform, self.frames, self.fps = transform, frames, fps

    def __call__(self, data: bytes, where: str) -> np.ndarray:
        images = decode_video(data, where, self.frames, self.fps)
        return np.stack([self.transform(image).numpy() for image in images])
