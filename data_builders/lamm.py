"""LAMM -> one Sample per row: LLaVA-like `{id?, image | pcl, conversations: [{from: human|gpt, value}, ...],
task_type?, src_dataset?, src_id?}`.

2D rows name an image, 3D rows a point cloud (`pcl`, a .npy in the published data; any file mmtune.data.media
reads, .npy/.pcd/.ply, is accepted), both relative to the media folder (default: the JSON file's folder). LAMM's
turns carry no placeholder, so `<image>` or `<points>` is prepended to the first user turn when none is written.
The id is `id`, else `{src_dataset}/{src_id}`, else the record number; `task_type` becomes the sample's task.
"""
from __future__ import annotations

from typing import Any

from data_builders.common import MISSING_FIELD, Context, Where, as_object, optional, require
from data_builders.llava import with_placeholders
from data_builders.samples import MediaRef, make_sample
from data_builders.sharegpt import parse_turns
from mmtune.data.sample import Sample

MEDIA_FIELDS = {"image": "image", "pcl": "points"}
"""Record field -> media kind, in placeholder order when a row names both."""


def convert(value: Any, where: Where, ctx: Context) -> list[Sample]:
    record = as_object(value, where)
    where = where.with_id(record.get("id", _source_id(record)))
    messages = parse_turns(require(record, "conversations", list, where), where, "conversations")
    media = [MediaRef(kind, path, key) for key, kind in MEDIA_FIELDS.items()
             if (path := optional(record, key, str, where))]
    if not media:
        raise where.error("image", "missing (a LAMM row names an image or a point cloud in pcl)", MISSING_FIELD)
    return [make_sample(where, ctx, with_placeholders(messages, media), media, field="conversations",
                        task=optional(record, "task_type", str, where, default=""))]


def _source_id(record: dict) -> str | None:
    if record.get("src_dataset") is None or record.get("src_id") is None:
        return None
    return f"{record['src_dataset']}/{record['src_id']}"
