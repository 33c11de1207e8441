"""Edit an image with a trained image editor: DDIM sampling with InstructPix2Pix's classifier-free guidance,
step for step what diffusers' StableDiffusionInstructPix2PixPipeline does (so an exported editor gives the same
image). Heavy imports stay inside the functions, so `mmtune --help` does not load torch.

Three UNet passes per step: (instruction, image), (no instruction, image) and (neither); the guided noise is
uncond + image_scale * (image - uncond) + text_scale * (full - image), so each scale weighs its own condition.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch
    from PIL import Image


def edit(model, tokenizer, image: "Image.Image", prompt: str, *, steps: int = 20, text_scale: float = 7.5,
         image_scale: float = 1.5, seed: int = 0) -> "Image.Image":
    """The edited image (model.editor.image_size square); the same seed and settings give the same image."""
    import numpy as np
    from PIL import Image

    pixels = edit_pixels(model, tokenizer, image, prompt, steps=steps, text_scale=text_scale,
                         image_scale=image_scale, seed=seed)
    return Image.fromarray((pixels.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))


def edit_pixels(model, tokenizer, image: "Image.Image", prompt: str, *, steps: int, text_scale: float,
                image_scale: float, seed: int) -> "torch.Tensor":
    """The edited image as [3, size, size] floats in [0, 1], before rounding to 8 bits."""
    import torch

    from mmtune.data.edits import collate_edits, edit_transform
    from mmtune.data.packing import to_device
    from mmtune.models.editor import sampler

    device = next(model.unet.parameters()).device
    encoded = {"id": "--image", **model.text_encoder.prompt(prompt, image, "--prompt"),
               "source_pixels": edit_transform(image, model.image_size)}
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batch = to_device(collate_edits([[encoded]] * 3, pad_id), device)
    scheduler = sampler(model.schedule)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, *model.latent_shape, generator=generator).to(device) * scheduler.init_noise_sigma
    with torch.no_grad():
        states, mask, image_latents = model.condition(batch, torch.tensor([False, True, True], device=device),
                                                      torch.tensor([False, False, True], device=device))
        for t in scheduler.timesteps:
            noisy = scheduler.scale_model_input(latents.expand(3, -1, -1, -1), t)
            full, image_only, uncond = model.predict(noisy, t, states, mask, image_latents).chunk(3)
            guided = uncond + image_scale * (image_only - uncond) + text_scale * (full - image_only)
            latents = scheduler.step(guided, t, latents).prev_sample
        return model.vae.decode(latents / model.vae.scaling_factor)[0]


def add_arguments(p) -> None:
    p.add_argument("--ckpt", required=True, help="checkpoint directory or run directory (newest checkpoint)")
    p.add_argument("--image", required=True, help="the image to edit")
    p.add_argument("--prompt", required=True, help="the edit instruction, e.g. 'make the circle red'")
    p.add_argument("--out", required=True, help="where the edited image is written (PNG)")
    add_sampling_arguments(p)


def add_sampling_arguments(p) -> None:
    """The sampler's settings, shared by `mmtune edit`, `mmtune eval --task edit` and the edit demo."""
    p.add_argument("--steps", type=int, default=20, help="DDIM sampling steps")
    p.add_argument("--seed", type=int, default=0, help="seed of the starting noise")
    p.add_argument("--text-scale", type=float, default=7.5, help="guidance towards the instruction")
    p.add_argument("--image-scale", type=float, default=1.5, help="guidance towards the input image")


def load_editor(ckpt: str | Path) -> Editor:
    """The image editor of a checkpoint (or of a run directory's newest one); ConfigError for another model kind."""
    from mmtune.errors import ConfigError
    from mmtune.infer.generate import load_checkpoint

    model, tokenizer, cfg = load_checkpoint(ckpt)
    if cfg.model.kind != "image_editor":
        raise ConfigError(f"--ckpt: {ckpt} holds a model.kind={cfg.model.kind} model, not an image editor")
    return Editor(model, tokenizer)


class Editor:
    """A trained image editor (`mmtune edit` and `mmtune.load_editor`): `editor.edit(image or path, prompt)`."""

    def __init__(self, model, tokenizer):
        self.model, self.tokenizer = model, tokenizer

    def edit(self, image: "Image.Image | str | Path", prompt: str, **settings) -> "Image.Image":
        """The edited image; `settings` as `edit` (steps, text_scale, image_scale, seed)."""
        if isinstance(image, (str, Path)):
            image = read_image(image)
        return edit(self.model, self.tokenizer, image, prompt, **settings)


def read_image(path: str | Path) -> "Image.Image":
    """An image file, decoded; an unreadable or corrupt one is a UserError naming it."""
    from mmtune.data.media import decode_image
    from mmtune.errors import ConfigError

    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise ConfigError(f"--image: cannot read {path} ({e.strerror})") from None
    return decode_image(data, str(path))


def run(args) -> int:
    edited = load_editor(args.ckpt).edit(args.image, args.prompt, steps=args.steps, text_scale=args.text_scale,
                                         image_scale=args.image_scale, seed=args.seed)
    edited.save(args.out, format="PNG")
    print(f"mmtune edit: wrote {args.out}")
    return 0
