"""Vision-Flan -> one Sample per row: `{id, image, task_name?, conversations: [human, gpt]}` (the published
`annotation_191-task_1k.json`) or the per-task layout `{id, image, instruction, target}`.

`image` is a path relative to the image folder (default: the JSON file's folder) and is required. Turns without a
placeholder get `<image>` prepended to the first user turn, as LLaVA's. Vision-Flan reuses ids across rows (the
same image under several tasks), so sample ids are `{id}/{record number}`; `task_name` becomes the sample's task.
"""
from __future__ import annotations

from typing import Any

from data_builders.common import Context, Where, as_object, optional, require
from data_builders.llava import with_placeholders
from data_builders.samples import MediaRef, make_sample
from data_builders.sharegpt import turns_or_pair
from mmtune.data.sample import Sample


def convert(value: Any, where: Where, ctx: Context) -> list[Sample]:
    record = as_object(value, where)
    where = where.with_id(record.get("id"))
    messages, field = turns_or_pair(record, where, "instruction", "target")
    media = [MediaRef("image", require(record, "image", str, where), "image")]
    sample_id = f"{where.id or ctx.source}/{where.record}"
    return [make_sample(where, ctx, with_placeholders(messages, media), media, field=field, sample_id=sample_id,
                        task=optional(record, "task_name", str, where, default=""))]

