"""InstructPix2Pix on diffusers: a UNet2DConditionModel denoises the edited image's latent, reading it
concatenated with the input image's latent and cross-attending to the conditioner's states (models/conditioning.py:
a frozen text encoder, or the multimodal LLM reading the input image and the instruction).

The VAE is frozen (and kept in eval mode); the UNet trains whole. The input channels added for the image latent
start at zero, so a UNet taken from a text-to-image model predicts exactly what it did before at step 0.
Conditioning is dropped per sample by the conditioner (the empty instruction; no image for the LLM) and here (a
zero image latent): the "unconditional" inputs that classifier-free guidance needs at inference.
"""
from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from mmtune.config import EditorConfig, RunConfig
from mmtune.errors import ConfigError

SMALL_UNET = {"block_out_channels": (64, 128), "layers_per_block": 1, "attention_head_dim": 8,
              "norm_num_groups": 16, "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
              "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D")}
"""The default UNet (model.editor.unet overrides it key by key): small enough to train on a CPU in minutes."""
LATENT_DOWNSCALE = 8
"""Image pixels per latent pixel along each side, for TAEF2 and Stable Diffusion's AutoencoderKL alike."""


def expand_input_channels(unet, extra: int):
    """Give `unet.conv_in` `extra` more input channels whose weights are zero, so the output is unchanged."""
    old = unet.conv_in
    new = nn.Conv2d(old.in_channels + extra, old.out_channels, old.kernel_size, old.stride, old.padding)
    with torch.no_grad():
        new.weight.zero_()
        new.weight[:, :old.in_channels] = old.weight
        new.bias.copy_(old.bias)
    unet.conv_in = new
    unet.register_to_config(in_channels=old.in_channels + extra)
    return unet


class KLVae(nn.Module):
    """diffusers' AutoencoderKL behind TAEF2's interface: images in [0, 1], latents unscaled (the distribution's
    mode), `scaling_factor` for the latents the UNet denoises."""

    def __init__(self, vae):
        super().__init__()
        self.vae = vae
        self.latent_channels = vae.config.latent_channels
        self.scaling_factor = vae.config.scaling_factor

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        return self.vae.encode(images * 2 - 1).latent_dist.mode()

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        return ((self.vae.decode(latents).sample + 1) / 2).clamp(0, 1)


def load_vae(source: str) -> nn.Module:
    """A TAEF2 folder or a diffusers AutoencoderKL directory (config.json), frozen."""
    from mmtune.models.taef2 import TAEF2

    path = Path(source).expanduser()
    if (path / "config.json").is_file():
        from diffusers import AutoencoderKL

        kl = AutoencoderKL.from_pretrained(path)
        if 2 ** (len(kl.config.block_out_channels) - 1) != LATENT_DOWNSCALE:
            raise ConfigError(f"model.editor.vae: {source} downsamples by {2 ** (len(kl.config.block_out_channels) - 1)}"
                              f", not {LATENT_DOWNSCALE} ({len(kl.config.block_out_channels)} blocks; 4 needed)")
        vae = KLVae(kl)
    elif path.is_dir():
        vae = TAEF2.load(path)
        vae.scaling_factor = 1.0
    else:
        raise ConfigError(f"model.editor.vae: no such folder {source!r} (TAEF2's .pth pair, or a diffusers "
                          "AutoencoderKL directory)")
    return vae.requires_grad_(False).eval()


def build_unet(editor: EditorConfig, latent_channels: int, text_width: int):
    """`init_unet` (a diffusers UNet directory) or the small default (cross-attending to `text_width` unless
    model.editor.unet says otherwise), widened to read the input image's latent."""
    from diffusers import UNet2DConditionModel

    if editor.init_unet:
        unet = UNet2DConditionModel.from_pretrained(Path(editor.init_unet).expanduser())
    else:
        unet = UNet2DConditionModel(**{**SMALL_UNET, "sample_size": editor.image_size // LATENT_DOWNSCALE,
                                       "in_channels": latent_channels, "out_channels": latent_channels,
                                       "cross_attention_dim": text_width, **editor.unet})
    if unet.config.in_channels != latent_channels:
        raise ConfigError(f"model.editor: the UNet reads {unet.config.in_channels} latent channels; the VAE gives "
                          f"{latent_channels}")
    return expand_input_channels(unet, latent_channels)


def noise_schedule(editor: EditorConfig):
    """DDPM with Stable Diffusion's scaled-linear betas. No clipping of the predicted clean latent (diffusers'
    default clips it to [-1, 1] when sampling; latents, TAEF2's above all, are wider: the edits came out grey)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=editor.train_timesteps, beta_schedule="scaled_linear",
                         beta_start=0.00085, beta_end=0.012, prediction_type=editor.prediction, clip_sample=False)


def sampler(schedule):
    """DDIM over the training schedule, without clipping predicted latents to [-1, 1] (they are not pixels; Stable
    Diffusion's setting). `mmtune edit` samples with it and the diffusers export writes it."""
    from diffusers import DDIMScheduler

    return DDIMScheduler.from_config(schedule.config, clip_sample=False)


class ImageEditor(nn.Module):
    def __init__(self, unet, vae, text_encoder, editor: EditorConfig):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.schedule = noise_schedule(editor)
        self.image_size = editor.image_size
        self.latent_shape = (vae.latent_channels, editor.image_size // LATENT_DOWNSCALE,
                             editor.image_size // LATENT_DOWNSCALE)

    def train(self, mode: bool = True):
        """The frozen VAE stays in eval mode."""
        super().train(mode)
        self.vae.eval()
        return self

    @torch.no_grad()
    def image_latents(self, pixels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """The input image's latent (unscaled, as diffusers' InstructPix2Pix); zero where `drop` is set."""
        return self.vae.encode(pixels) * (~drop)[:, None, None, None]

    def condition(self, batch: dict, drop_text: torch.Tensor, drop_image: torch.Tensor):
        """(cross-attention states, their mask or None, input-image latents) with the dropped conditions removed."""
        states, mask = self.text_encoder(batch, drop_text, drop_image)
        return states, mask, self.image_latents(batch["source_pixels"], drop_image)

    def predict(self, noisy, timesteps, states, mask, image_latents) -> torch.Tensor:
        return self.unet(torch.cat([noisy, image_latents], dim=1), timesteps, encoder_hidden_states=states,
                         encoder_attention_mask=mask).sample

    def forward(self, batch: dict, noise, timesteps, drop_text, drop_image) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, target) for the edited images noised to `timesteps`: the noise, or v."""
        with torch.no_grad():
            latents = self.vae.encode(batch["target_pixels"]) * self.vae.scaling_factor
        noisy = self.schedule.add_noise(latents, noise, timesteps)
        pred = self.predict(noisy, timesteps, *self.condition(batch, drop_text, drop_image))
        target = noise if self.schedule.config.prediction_type == "epsilon" else \
            self.schedule.get_velocity(latents, noise, timesteps)
        return pred, target


def build_editor(cfg: RunConfig):
    """(ImageEditor, the conditioner's tokenizer). The UNet trains whole; parts built here are saved whole."""
    from mmtune.models.conditioning import build_text_encoder

    editor = cfg.model.editor
    torch.manual_seed(cfg.train.seed)
    text_encoder, from_scratch = build_text_encoder(cfg)
    vae = load_vae(editor.vae)
    unet = build_unet(editor, vae.latent_channels, text_encoder.width)
    text_encoder.fit(unet.config.cross_attention_dim)
    model = ImageEditor(unet, vae, text_encoder, editor)
    model.from_scratch = from_scratch | (set() if editor.init_unet else {"unet"})
    if cfg.model.init_from:
        from mmtune.models.build import load_weights

        load_weights(model, Path(cfg.model.init_from), field="model.init_from")
    return model, text_encoder.prompt.tokenizer
