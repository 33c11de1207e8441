"""decode_image: every readable image becomes upright RGB; bad bytes raise DataError naming where they came from."""
from __future__ import annotations

import io
import re

import pytest
from PIL import Image

from mmtune.data.media import decode_image
from mmtune.errors import DataError
from tests.helpers import EXAMPLE_IMAGE

WHERE = "shards/demo-000000.tar key 'coco_000123' member 0.jpg"


def encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt, **kwargs)
    return buf.getvalue()


def test_jpeg_decodes_to_rgb():
    image = decode_image(EXAMPLE_IMAGE.read_bytes(), WHERE)
    assert (image.mode, image.size) == ("RGB", (512, 512))


@pytest.mark.parametrize("mode, fmt", [("RGBA", "PNG"), ("L", "PNG"), ("P", "GIF"), ("CMYK", "JPEG")])
def test_other_modes_become_rgb(mode, fmt):
    image = decode_image(encode(Image.new(mode, (6, 4)), fmt), WHERE)
    assert (image.mode, image.size) == ("RGB", (6, 4))


def test_exif_orientation_is_applied():
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90° clockwise to display
    image = decode_image(encode(Image.new("RGB", (20, 10)), "JPEG", exif=exif), WHERE)
    assert image.size == (10, 20)


@pytest.mark.parametrize("data, reason", [
    (b"definitely not an image", "not an image in a format PIL reads"),
    (b"", "not an image in a format PIL reads"),
    (EXAMPLE_IMAGE.read_bytes()[:20000], "truncated"),
])
def test_undecodable_bytes_name_the_member(data, reason):
    with pytest.raises(DataError, match=rf"{re.escape(WHERE)}: cannot decode image \({len(data)} bytes\): .*{reason}"):
        decode_image(data, WHERE)
