"""Edit triplets (input image, instruction, edited image) -> encoded samples and batches for image editors.

The instruction is the user turns' text without the image placeholder, tokenised by the text encoder's
tokenizer; both images get the same transform (shorter side resized, centre square crop, [0, 1]). Like
SampleEncoder, images leave as numpy arrays (cheap through DataLoader worker queues).
"""
from __future__ import annotations

from dataclasses import dataclass

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
    """Sample -> dict(id, input_ids, source_pixels, target_pixels, modality, truncated). Raises DataError naming
    the sample when it is not an edit triplet."""
    tokenizer: object
    image_size: int
    max_text_len: int
    packable = False

    def __call__(self, sample: Sample) -> dict:
        where = sample.where
        images = [m for m in sample.media if m.kind == "image"]
        if sample.target is None or len(images) != 1:
            raise DataError(f"{where}: not an edit triplet: needs one input image and a target image "
                            f"(has {len(images)} image(s), target {'set' if sample.target else 'missing'})")
        ids = self.tokenizer(instruction(sample))["input_ids"]
        truncated = len(ids) > self.max_text_len
        if truncated:  # keep the closing special token the encoder was trained with
            ids = ids[:self.max_text_len - 1] + ids[-1:]
        pixels = [edit_transform(decode_image(sample.data[m.member], f"{where} member {m.member!r}"), self.image_size)
                  for m in (images[0], sample.target)]
        return {"id": sample.id, "input_ids": ids, "source_pixels": pixels[0], "target_pixels": pixels[1],
                "modality": "edit", "truncated": truncated}

    @property
    def collate_fn(self):
        return collate_edits


def collate_edits(rows: list[list[dict]], pad_id: int) -> dict:
    """One triplet per row: instruction ids padded (`seq_ids` -1 on padding, as token rows), both image stacks."""
    samples = [row[0] for row in rows]
    width = max(len(s["input_ids"]) for s in samples)
    input_ids = torch.full((len(samples), width), pad_id, dtype=torch.long)
    seq_ids = torch.full((len(samples), width), -1, dtype=torch.long)
    for i, s in enumerate(samples):
        input_ids[i, :len(s["input_ids"])] = torch.tensor(s["input_ids"])
        seq_ids[i, :len(s["input_ids"])] = i
    return {"input_ids": input_ids, "attention_mask": (seq_ids >= 0).long(), "seq_ids": seq_ids,
            "source_pixels": torch.as_tensor(np.stack([s["source_pixels"] for s in samples])),
            "target_pixels": torch.as_tensor(np.stack([s["target_pixels"] for s in samples])),
            "sample_ids": [s["id"] for s in samples], "packed": False}



MASK_MEMBER = "mask.png"
"""Optional member of an edit triplet: where the edit should change the input (white) and where not (black)."""
CAPTIONS_MEMBER = "captions.json"
"""Optional member: `{"input": caption of the input image, "edited": caption of the edited image}`, which CLIP
directional similarity compares the edit with."""
