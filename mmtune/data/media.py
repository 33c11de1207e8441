"""Decode the media members of a shard sample into what encoders take.

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

