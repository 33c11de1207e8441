"""Edit an image with a trained image editor: DDIM sampling with InstructPix2Pix's classifier-free guidance.
Heavy imports stay inside the functions, so `mmtune --help` does not load torch.

Three UNet passes per step: (instruction, image), (no instruction, image) and (neither); the guided noise is
uncond + image_scale * (image - uncond) + text_scale * (full - image), so each scale weighs its own condition.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from PIL import Image


def edit(model, tokenizer, image: "Image.Image", prompt: str, *, steps: int = 20, text_scale: float = 7.5,
         image_scale: float = 1.5, seed: int = 0) -> "Image.Image":
    """The edited image (model.editor.image_size square); the same seed and settings give the same image."""
    import torch

    with torch.no_grad():
        return _sample(model, tokenizer, image, prompt, steps, text_scale, image_scale, seed)


def _sample(model, tokenizer, image, prompt, steps, text_scale, image_scale, seed):
    import numpy as np
    import torch
    from diffusers import DDIMScheduler
    from PIL import Image

    from mmtune.data.edits import edit_transform

    device = next(model.unet.parameters()).device
    pixels = torch.as_tensor(edit_transform(image, model.image_size))[None].to(device).expand(3, -1, -1, -1)
    ids = torch.tensor(tokenizer(prompt)["input_ids"], device=device)[None].expand(3, -1)
    text, mask = model.text_features(ids, torch.ones_like(ids), torch.tensor([False, True, True], device=device))
    image_latents = model.image_latents(pixels, torch.tensor([False, False, True], device=device))
    scheduler = DDIMScheduler.from_config(model.schedule.config)
    scheduler.set_timesteps(steps)
    generator = torch.Generator().manual_seed(seed)
    latents = torch.randn(1, *model.latent_shape, generator=generator).to(device) * scheduler.init_noise_sigma
    for t in scheduler.timesteps:
        full, image_only, uncond = model.predict(latents.expand(3, -1, -1, -1), t, text, mask, image_latents).chunk(3)
        guided = uncond + image_scale * (image_only - uncond) + text_scale * (full - image_only)
        latents = scheduler.step(guided, t, latents).prev_sample
    out = model.vae.decode(latents / model.vae.scaling_factor)[0]
    return Image.fromarray((out.permute(1, 2, 0).cpu().numpy() * 255).round().astype(np.uint8))


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


def run(args) -> int:
    from mmtune.data.media import decode_image
    from mmtune.errors import ConfigError
    from mmtune.infer.generate import load_checkpoint

    model, tokenizer, cfg = load_checkpoint(args.ckpt)
    if cfg.model.kind != "image_editor":
        raise ConfigError(f"--ckpt: {args.ckpt} holds a model.kind={cfg.model.kind} model, not an image editor")
    try:
        data = open(args.image, "rb").read()
    except OSError as e:
        raise ConfigError(f"--image: cannot read {args.image} ({e.strerror})") from None
    edited = edit(model, tokenizer, decode_image(data, args.image), args.prompt, steps=args.steps,
                  text_scale=args.text_scale, image_scale=args.image_scale, seed=args.seed)
    edited.save(args.out, format="PNG")
    print(f"mmtune edit: wrote {args.out}")
    return 0
