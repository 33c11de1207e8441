"""Edit triplets (input image, instruction, edited image) -> encoded samples and batches for image editors.

The instruction is the user turns' text without the image placeholder; the editor's conditioner turns it (and,
for an LLM, the input image) into ids (models/conditioning.py). Both images get the same transform (shorter side
resized, centre square crop, [0, 1]). Like SampleEncoder, images leave as numpy arrays (cheap through DataLoader
worker queues).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch
from PIL import Image

from mmtune.data.media import decode_image
from mmtune.data.sample import PLACEHOLDER_RE, Sample
from mmtune.errors import DataError


def edit_transform(image: Image.Image, size: int) -> np.ndarray:
    """PIL image -> [3, size, size] float32 in [0, 1]: shorter side to `size` (bicubic), centre crop."""
    image = image.convert("RGB")
    scale = size / min(image.size)
    w, h = max(size, round(image.width * scale)), max(size, round(image.height * scale))
    image = image.resize((w, h), Image.BICUBIC)
    left, top = (w - size) // 2, (h - size) // 2
    image = image.crop((left, top, left + size, top + size))
    return np.asarray(image, dtype=np.float32).transpose(2, 0, 1) / 255.0


def instruction(sample: Sample) -> str:
    return " ".join(PLACEHOLDER_RE.sub("", m.content).strip() for m in sample.messages if m.role == "user").strip()


@dataclass
class EditEncoder:
    """Sample -> dict(id, input_ids, source_pixels, target_pixels, modality, truncated, and what the conditioner's
    `prompt` adds). Raises DataError naming the sample when it is not an edit triplet."""
    prompt: Callable[[str, Image.Image, str], dict]
    image_size: int
    packable = False

    def __call__(self, sample: Sample) -> dict:
        where = sample.where
        images = [m for m in sample.media if m.kind == "image"]
        if sample.target is None or len(images) != 1:
            raise DataError(f"{where}: not an edit triplet: needs one input image and a target image "
                            f"(has {len(images)} image(s), target {'set' if sample.target else 'missing'})")
        source, target = (decode_image(sample.data[m.member], f"{where} member {m.member!r}")
                          for m in (images[0], sample.target))
        return {"id": sample.id, **self.prompt(instruction(sample), source, where),
                "source_pixels": edit_transform(source, self.image_size),
                "target_pixels": edit_transform(target, self.image_size), "modality": "edit"}

    @property
    def collate_fn(self):
        return collate_edits


IDS = {"input_ids": "attention_mask", "text_ids": "text_mask"}
"""Id fields an encoded edit may hold -> the mask collate gives each: the conditioner's ids, and the LLM's prompt
without the image."""
ARRAYS = ("source_pixels", "target_pixels", "cond_image")
"""Array fields an encoded edit may hold: both images, and the input image as the LLM's image encoder reads it."""


def collate_edits(rows: list[list[dict]], pad_id: int) -> dict:
    """One triplet per row: id fields padded (`seq_ids` -1 on input_ids' padding, as token rows), arrays stacked."""
    samples = [row[0] for row in rows]
    batch = {"sample_ids": [s["id"] for s in samples], "packed": False}
    for key, mask_key in IDS.items():
        if key in samples[0]:
            batch[key], batch[mask_key] = _pad([s[key] for s in samples], pad_id)
    mask = batch["attention_mask"]
    batch["seq_ids"] = torch.arange(len(samples))[:, None].expand_as(mask).masked_fill(mask == 0, -1)
    batch.update({key: torch.as_tensor(np.stack([s[key] for s in samples])) for key in ARRAYS if key in samples[0]})
    return batch


def _pad(rows: list[list[int]], pad_id: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-padded ids and their mask (1 on real tokens)."""
    ids = torch.full((len(rows), max(len(r) for r in rows)), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, r in enumerate(rows):
        ids[i, :len(r)] = torch.tensor(r)
        mask[i, :len(r)] = 1
    return ids, mask

MASK_MEMBER = "mask.png"
"""Optional member of an edit triplet: where the edit should change the input (white) and where not (black)."""
CAPTIONS_MEMBER = "captions.json"
"""Optional member: `{"input": caption of the input image, "edited": caption of the edited image}`, which CLIP
directional similarity compares the edit with."""
