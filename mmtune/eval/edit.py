"""`mmtune eval --task edit`: how well an image editor carries out held-out edit triplets.

Every triplet's input is edited with `mmtune edit`'s sampler and compared with the target, in the model's pixels
(the training transform, values in [0, 1]):
- `psnr`: PSNR of the edits against the targets, next to `psnr_identity`, the same for the inputs returned
  unchanged (the baseline an editor has to beat: most pixels of an edit stay as they are); pooled, i.e. from the
  mean squared error over all images, so that perfect edits (an emptied image) do not rule a mean of PSNRs;
- where the sample carries the changed region (`mask.png`, see mmtune/data/edits.py): `psnr_region` (and its
  identity baseline) inside it, `region_improved` (the share of edits that are closer to the target than the input
  is, inside the region), and the mean absolute change from the input inside and outside the region
  (`inside_change`, `outside_change`): the intended region should change and the rest should not;
- where it carries captions of the image before and after (`captions.json`) and a CLIP model is given: CLIP
  directional similarity, the cosine between the change of the CLIP image embedding (input -> edit) and the change
  of the text embedding (caption before -> after), as in InstructPix2Pix's evaluation.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mmtune.errors import ConfigError, DataError

MAX_PSNR = 100.0
"""PSNR of identical images (an MSE floor of 1e-10), so a perfect edit scores a finite number."""


@dataclass
class Sampling:
    """`mmtune edit`'s sampler settings (see mmtune/infer/edit.py; defaults: its command-line arguments)."""
    steps: int
    text_scale: float
    image_scale: float
    seed: int

    @classmethod
    def from_args(cls, args) -> "Sampling":
        """From the arguments that infer/edit.py's `add_sampling_arguments` declares."""
        return cls(args.steps, args.text_scale, args.image_scale, args.seed)


@dataclass
class EditItem:
    id: str
    task: str
    prompt: str
    source: np.ndarray
    """[3, S, S] float32 in [0, 1]: the input as the model sees it."""
    target: np.ndarray
    mask: np.ndarray | None
    """[S, S] bool, True where the edit should change the image; None when the sample has none."""
    captions: tuple[str, str] | None
    """(caption of the input, caption of the target), or None."""

    def input_image(self):
        return to_image(self.source)


def to_image(pixels: np.ndarray):
    """[3, S, S] in [0, 1] -> PIL RGB (exact for pixels that came from 8-bit images)."""
    from PIL import Image

    return Image.fromarray((pixels.transpose(1, 2, 0) * 255).round().astype(np.uint8))


def load_edit_items(data: str | list[str], image_size: int, on_error: str = "raise"):
    """Edit triplets from shards (paths, globs, directories) -> Loaded(items, counts); see eval/items.py."""
    from mmtune.data.edits import EditEncoder
    from mmtune.data.shards import expand_shards
    from mmtune.eval.items import load_shards

    encode = EditEncoder(_no_prompt, image_size)  # the training transform's checks and pixels
    return load_shards(expand_shards([data] if isinstance(data, str) else data, "--data"),
                       lambda sample: _edit_item(sample, encode, image_size), on_error)


def _no_prompt(text: str, image, where: str) -> dict:
    """Evaluation prompts the model at sampling time; the items need no conditioner fields."""
    return {}


def _edit_item(sample, encode, image_size: int) -> EditItem:
    from mmtune.data.edits import CAPTIONS_MEMBER, MASK_MEMBER, edit_transform, instruction
    from mmtune.data.media import decode_image

    encoded = encode(sample)  # the training transform; DataError naming the sample unless it is an edit triplet
    mask = captions = None
    if MASK_MEMBER in sample.data:
        mask = edit_transform(decode_image(sample.data[MASK_MEMBER], f"{sample.where} member {MASK_MEMBER!r}"),
                              image_size)[0] > 0.5
    if CAPTIONS_MEMBER in sample.data:
        captions = _captions(sample.data[CAPTIONS_MEMBER], f"{sample.where} member {CAPTIONS_MEMBER!r}")
    return EditItem(sample.id, sample.task, instruction(sample), encoded["source_pixels"], encoded["target_pixels"],
                    mask, captions)


def _captions(data: bytes, where: str) -> tuple[str, str]:
    try:
        obj = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise DataError(f"{where}: not JSON ({e})") from None
    if not isinstance(obj, dict) or not all(isinstance(obj.get(k), str) for k in ("input", "edited")):
        raise DataError(f"{where}: expected {{\"input\": caption, \"edited\": caption}} strings")
    return obj["input"], obj["edited"]


def run_edits(model, tokenizer, items: list[EditItem], sampling: Sampling) -> list[np.ndarray]:
    """Each item's input edited by `mmtune edit`'s sampler -> [3, S, S] arrays in [0, 1]."""
    from mmtune.data.edits import edit_transform
    from mmtune.infer.edit import edit

    return [edit_transform(edit(model, tokenizer, item.input_image(), item.prompt, steps=sampling.steps,
                                text_scale=sampling.text_scale, image_scale=sampling.image_scale,
                                seed=sampling.seed), model.image_size) for item in items]


def mse(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """Mean squared error of images in [0, 1] ([3, S, S]) over the pixels `where` ([S, S] bool) is set, or all."""
    err = (a.astype(np.float64) - b) ** 2
    return float(err.mean() if where is None else err[:, where].mean())


def psnr_of(mean_squared_error: float) -> float:
    return 10 * math.log10(1 / max(mean_squared_error, 10 ** (-MAX_PSNR / 10)))


def psnr(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> float:
    """PSNR in dB of images in [0, 1], over the pixels `where` is set, or all."""
    return psnr_of(mse(a, b, where))


def item_scores(item: EditItem, edited: np.ndarray) -> dict:
    """The per-image numbers that `summarise` pools (region ones only for a mask with both sides)."""
    out = {"mse": mse(edited, item.target), "mse_identity": mse(item.source, item.target)}
    if item.mask is not None and 0 < item.mask.sum() < item.mask.size:
        inside, outside = item.mask, ~item.mask
        change = np.abs(edited.astype(np.float64) - item.source).mean(axis=0)
        out.update(mse_region=mse(edited, item.target, inside), mse_region_identity=mse(item.source, item.target,
                                                                                         inside),
                   inside_change=float(change[inside].mean()), outside_change=float(change[outside].mean()))
        out["region_improved"] = float(out["mse_region"] < out["mse_region_identity"])
    return out


def summarise(items: list[EditItem], scores: list[dict]) -> dict:
    """Means over the images that have each number, with every mean squared error as the PSNR of the mean (pooled
    over pixels: a mean of per-image PSNRs would be ruled by the edits that are perfect, such as an emptied image),
    overall and per edit kind (`task`)."""
    def mean(key: str, task: str | None = None) -> float:
        return float(np.mean([s[key] for it, s in zip(items, scores) if key in s and task in (None, it.task)]))

    def named(key: str) -> str:
        return key.replace("mse", "psnr", 1)

    def value(key: str, task: str | None = None) -> float:
        return psnr_of(mean(key, task)) if key.startswith("mse") else mean(key, task)

    per_task = {t: {"psnr": value("mse", t), "psnr_identity": value("mse_identity", t),
                    "count": sum(it.task == t for it in items)} for t in sorted({it.task for it in items if it.task})}
    return {"count": len(items), **{named(k): value(k) for k in dict.fromkeys(k for s in scores for k in s)},
            "per_task": per_task}


class ClipDirection:
    """CLIP directional similarity with an open_clip model: an architecture name (mmtune's own small ones in
    mmtune/encoders/model_configs included) and optional local weights; without them the model is random, which
    checks shapes, not quality."""

    def __init__(self, arch: str, weights: str = ""):
        import open_clip

        from mmtune.encoders.clip import MODEL_CONFIGS

        open_clip.add_model_config(MODEL_CONFIGS)
        if arch not in open_clip.list_models():
            raise ConfigError(f"--clip-arch: unknown open_clip architecture {arch!r} (see open_clip.list_models())")
        if weights and not Path(weights).is_file():
            raise ConfigError(f"--clip-weights: no file {weights} (local weights only; nothing is downloaded)")
        self.model, _, self.preprocess = open_clip.create_model_and_transforms(
            arch, pretrained=str(Path(weights).resolve()) if weights else None)
        self.model.eval()
        self.tokenize = open_clip.get_tokenizer(arch)
        self.name = f"{arch} ({weights or 'random weights'})"

    def __call__(self, inputs: list, edits: list, captions: list[tuple[str, str]]):
        """[N] cosines between the CLIP image-embedding change (input -> edit, PIL images) and the text-embedding
        change (caption before -> after); 0 where either does not change."""
        import torch
        import torch.nn.functional as F

        with torch.no_grad():
            image = [F.normalize(self.model.encode_image(torch.stack([self.preprocess(i) for i in group])), dim=-1)
                     for group in (inputs, edits)]
            text = [F.normalize(self.model.encode_text(self.tokenize(list(group))), dim=-1)
                    for group in zip(*captions)]
        return F.cosine_similarity(image[1] - image[0], text[1] - text[0], dim=-1)


def evaluate_edits(model, tokenizer, items: list[EditItem], sampling: Sampling,
                   clip: ClipDirection | None = None) -> tuple[dict, list[np.ndarray], list[dict]]:
    """(summary, edited images, per-image scores): every item edited and scored. The summary's `counts` say how
    many images had no changed region (and, with a CLIP model, no captions) to score."""
    edits = run_edits(model, tokenizer, items, sampling)
    scores = [item_scores(it, e) for it, e in zip(items, edits)]
    with_captions = [k for k, it in enumerate(items) if it.captions is not None]
    if clip is not None and with_captions:
        similarity = clip([items[k].input_image() for k in with_captions], [to_image(edits[k]) for k in with_captions],
                          [items[k].captions for k in with_captions])
        for k, value in zip(with_captions, similarity.tolist()):
            scores[k]["clip_directional"] = value
    counts = {"no_region": sum("mse_region" not in s for s in scores)}
    if clip is not None:
        counts["no_captions"] = len(items) - len(with_captions)
    return {**summarise(items, scores), "sampling": vars(sampling), "counts": counts}, edits, scores


def edit_task(model, tokenizer, cfg, data, out: Path | None, *, limit: int | None, on_error: str,
              sampling: Sampling | None, clip_arch: str = "", clip_weights: str = "") -> dict:
    """`mmtune eval --task edit`: scores, and (given `out`) predictions.jsonl and the edited images."""
    if cfg.model.kind != "image_editor":
        raise ConfigError(f"--task edit scores an image editor; this checkpoint holds model.kind={cfg.model.kind}")
    if sampling is None:
        raise ConfigError("task edit: give the sampler's settings (eval.edit.Sampling)")
    loaded = load_edit_items(data, cfg.model.editor.image_size, on_error)
    items = loaded.items[:limit]
    if not items:
        raise DataError(f"--data: no edit triplet to score in {data} ({dict(loaded.counts) or 'empty'})")
    clip = ClipDirection(clip_arch, clip_weights) if clip_arch else None
    result, edits, scores = evaluate_edits(model, tokenizer, items, sampling, clip)
    if clip is not None:
        result["clip"] = clip.name
    if out is not None:
        (out / "edits").mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.jsonl", "w") as f:
            for k, (it, edited, s) in enumerate(zip(items, edits, scores)):
                image = f"edits/{k:06d}.png"  # numbered: a sample id may hold any character
                to_image(edited).save(out / image)
                f.write(json.dumps({"id": it.id, "task": it.task, "prompt": it.prompt, "psnr": psnr_of(s["mse"]), **s,
                                    "image": image}) + "\n")
    return {**result, "counts": {**loaded.counts, **result["counts"]}}
