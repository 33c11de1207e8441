"""InstructPix2Pix triplets -> one edit Sample per record: `{input_image, edit_prompt, edited_image}`, the column
names of the InstructPix2Pix data sets, with image paths relative to the image folder (default: the JSON file's).

The instruction becomes the user turn after the input image's placeholder; the edited image is the sample's
`target`. There is no assistant turn: image editors learn from the target.
"""
from __future__ import annotations

from typing import Any

from data_builders.common import Context, Where, as_object, require
from data_builders.samples import MediaRef, make_sample
from mmtune.data.sample import Message, Sample


def convert(value: Any, where: Where, ctx: Context) -> list[Sample]:
    record = as_object(value, where)
    where = where.with_id(record.get("id"))
    prompt = require(record, "edit_prompt", str, where)
    source = MediaRef("image", require(record, "input_image", str, where), "input_image")
    edited = MediaRef("image", require(record, "edited_image", str, where), "edited_image")
    return [make_sample(where, ctx, [Message("user", f"<image>\n{prompt}")], [source], field="edit_prompt",
                        target=edited)]
