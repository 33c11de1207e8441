"""Video chats -> one Sample per record, in the layouts of Video-ChatGPT and VideoChat-style instruction JSON:

- `{video_id | video, q, a}`: one question and answer (Video-ChatGPT's VideoInstruct-100K);
- `{video_id | video, conversations: [{from: human|gpt, value}, ...]}`: several turns (VideoChat, Valley).

`video` is a path relative to the media folder (default: the JSON file's folder). `video_id` names a video without
its suffix (as VideoInstruct-100K does): the first of `{video_id}.mp4`, `.mkv`, `.webm`, `.avi`, `.mov` that exists
is taken (an id that already ends in one of them is a path). Turns without a placeholder get `<video>` prepended to
the first user turn. For LLaMA-Factory's role/content video chats use the `mllm` builder.
"""
from __future__ import annotations

from pathlib import PurePath
from typing import Any

from data_builders.common import MISSING_FIELD, MISSING_MEDIA, Context, Where, as_object, media_path, optional
from data_builders.llava import with_placeholders
from data_builders.samples import MediaRef, make_sample
from data_builders.sharegpt import turns_or_pair
from mmtune.data.sample import Sample

VIDEO_SUFFIXES = (".mp4", ".mkv", ".webm", ".avi", ".mov")


def convert(value: Any, where: Where, ctx: Context) -> list[Sample]:
    record = as_object(value, where)
    video_id = optional(record, "video_id", str, where)
    where = where.with_id(record.get("id", video_id))
    messages, field = turns_or_pair(record, where, "q", "a")
    media = [_video(record, video_id, where, ctx)]
    return [make_sample(where, ctx, with_placeholders(messages, media), media, field=field)]


def _video(record: dict, video_id: str | None, where: Where, ctx: Context) -> MediaRef:
    """The record's video: its `video` path, or the file its `video_id` names."""
    path = optional(record, "video", str, where)
    if path is not None:
        return MediaRef("video", path, "video")
    if video_id is None:
        raise where.error("video", "missing (a video chat names `video` or `video_id`)", MISSING_FIELD)
    if PurePath(video_id).suffix.lower() in VIDEO_SUFFIXES:
        return MediaRef("video", video_id, "video_id")
    candidates = [video_id + suffix for suffix in VIDEO_SUFFIXES]
    for name in candidates:
        if media_path(ctx, name, where, "video_id").is_file():
            return MediaRef("video", name, "video_id")
    raise where.error("video_id", f"no video file for {video_id!r} in {ctx.media_root} (looked for "
                                  f"{', '.join(candidates)})", MISSING_MEDIA)
