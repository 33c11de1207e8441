"""Turn converted messages plus the media files a record names into a validated canonical Sample.

Media files are stored as their original bytes (never re-encoded) under members `0.jpg`, `1.png`, `2.mp4` ... in
placeholder order, one member per placeholder even when a record names the same file twice. Images must decode
with PIL here, so a corrupt image stops the build (or is skipped and counted) instead of failing mid-training.
Videos and point clouds are only checked to exist and be non-empty: their decoders live in mmtune.data.media and
run at load time. Every path must resolve inside the media folder unless the build allows otherwise
(common.media_path).
"""
from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

from PIL import Image

from data_builders.common import CORRUPT_MEDIA, MISSING_MEDIA, PLACEHOLDER_MISMATCH, Context, Where, media_path
from mmtune.data.sample import Media, Message, Sample, count_placeholders, validate

# PIL format name -> member extension, where the two differ (MPO is the multi-picture JPEG phones write).
_IMAGE_EXT = {"JPEG": "jpg", "MPO": "jpg", "TIFF": "tif"}


@dataclass(frozen=True)
class MediaRef:
    """A media file a record names, before it is read. `field` is where the record names it (e.g. `images[1]`).
    `data` holds the bytes of media a source embeds (MIMIC-IT's base64 images); `path` then only names them."""
    kind: str
    path: str
    field: str
    data: bytes | None = None


def make_sample(where: Where, ctx: Context, messages: list[Message], media: Sequence[MediaRef] = (), *,
                field: str = "messages", sample_id: str | None = None, target: MediaRef | None = None,
                task: str = "") -> Sample:
    """A validated Sample with its media (and edit `target`, read after them) read and checked. `field` names the
    turns in placeholder errors.

    The id is `sample_id`, else the record's own id, else `{source}-{record number}`.
    """
    check_placeholders(messages, [ref.kind for ref in media], where, field)
    refs, data = [], {}
    for i, ref in enumerate(media):
        member, data_bytes = _read(ref, i, where, ctx)
        refs.append(Media(ref.kind, member))
        data[member] = data_bytes
    target_ref = None
    if target is not None:
        member, data[member] = _read(target, len(media), where, ctx)
        target_ref = Media(target.kind, member)
    sample = Sample(id=sample_id or where.id or f"{ctx.source}-{where.record}", messages=messages,
                    source=ctx.source, task=task, media=refs, data=data, target=target_ref)
    validate(sample, str(where))
    return sample


def check_placeholders(messages: Sequence[Message], kinds: Sequence[str], where: Where, field: str) -> None:
    """Raise unless the placeholders in `messages`, in order, name exactly `kinds` (the media, in order)."""
    found = [kind for m in messages for kind in count_placeholders(m.content)]
    if found != list(kinds):
        raise where.error(field, f"{len(found)} placeholder(s) {_listing(found)} but {len(kinds)} media item(s) "
                                 f"{_listing(kinds)}", PLACEHOLDER_MISMATCH)


def _listing(kinds: Sequence[str]) -> str:
    return "[" + ", ".join(f"<{k}>" for k in kinds) + "]"


def _read(ref: MediaRef, index: int, where: Where, ctx: Context) -> tuple[str, bytes]:
    """(member name, original bytes) of one media file; raises naming the record, the field and the path."""
    if ref.data is not None:
        path, data = Path(ref.path), ref.data
    else:
        path = media_path(ctx, ref.path, where, ref.field)
        if not path.is_file():
            raise where.error(ref.field, f"{ref.kind} file {ref.path!r} not found (looked at {path})", MISSING_MEDIA)
        data = path.read_bytes()
    if not data:
        raise where.error(ref.field, f"{ref.kind} file {path} is empty", CORRUPT_MEDIA)
    if ref.kind == "image":
        ext = _image_ext(data, ref, path, where)
    else:
        ext = path.suffix.lower().lstrip(".") or "bin"
    return f"{index}.{ext}", data


def _image_ext(data: bytes, ref: MediaRef, path: Path, where: Where) -> str:
    """Decode the image fully (PIL is lazy until `load`) and name the member by its real format, not its suffix."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            fmt = image.format  # always set by Image.open
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise where.error(ref.field, f"image file {path} does not decode ({e})", CORRUPT_MEDIA) from None
    return _IMAGE_EXT.get(fmt, fmt.lower())
