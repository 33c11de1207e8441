"""InstructPix2Pix on diffusers: a UNet2DConditionModel denoises the edited image's latent, reading it
concatenated with the input image's latent and cross-attending to the instruction's text features.

The VAE and the text encoder are frozen (and kept in eval mode); only the UNet trains. The input channels added
for the image latent start at zero, so a UNet taken from a text-to-image model predicts exactly what it did
before at step 0. Conditioning is dropped per sample by swapping in the empty instruction's tokens (text) or a
zero latent (image), the two "unconditional" inputs that classifier-free guidance needs at inference.
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

        vae = KLVae(AutoencoderKL.from_pretrained(path))
    elif path.is_dir():
        vae = TAEF2.load(path)
        vae.scaling_factor = 1.0
    else:
        raise ConfigError(f"model.editor.vae: no such folder {source!r} (TAEF2's .pth pair, or a diffusers "
                          "AutoencoderKL directory)")
    return vae.requires_grad_(False).eval()


def load_text_encoder(source: str):
    """(frozen transformers encoder, its tokenizer) from a registered weight name or a local directory."""
    from transformers import AutoModel, AutoTokenizer

    from mmtune.models.weights import WEIGHTS, resolve

    path = resolve(source) if source in WEIGHTS else Path(source).expanduser()
    if not path.is_dir():
        raise ConfigError(f"model.editor.text_encoder: {source!r} is neither a registered weight "
                          f"({sorted(WEIGHTS)}) nor a local directory")
    return AutoModel.from_pretrained(path).requires_grad_(False).eval(), AutoTokenizer.from_pretrained(path)


def build_unet(editor: EditorConfig, latent_channels: int, text_width: int):
    """`init_unet` (a diffusers UNet directory) or the small default, widened to read the input image's latent."""
    from diffusers import UNet2DConditionModel

    if editor.init_unet:
        unet = UNet2DConditionModel.from_pretrained(Path(editor.init_unet).expanduser())
    else:
        unet = UNet2DConditionModel(**{**SMALL_UNET, "sample_size": editor.image_size // 8,
                                       "in_channels": latent_channels, "out_channels": latent_channels,
                                       "cross_attention_dim": text_width, **editor.unet})
    if unet.config.in_channels != latent_channels or unet.config.cross_attention_dim != text_width:
        raise ConfigError(f"model.editor: the UNet reads {unet.config.in_channels} latent channels and "
                          f"{unet.config.cross_attention_dim}-wide text; the VAE gives {latent_channels} and the "
                          f"text encoder {text_width}")
    return expand_input_channels(unet, latent_channels)


def noise_schedule(editor: EditorConfig):
    """DDPM with Stable Diffusion's scaled-linear betas. No clipping of the predicted clean latent (diffusers'
    default clips it to [-1, 1] when sampling; latents, TAEF2's above all, are wider: the edits came out grey)."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(num_train_timesteps=editor.train_timesteps, beta_schedule="scaled_linear",
                         beta_start=0.00085, beta_end=0.012, prediction_type=editor.prediction, clip_sample=False)


class ImageEditor(nn.Module):
    def __init__(self, unet, vae, text_encoder, tokenizer, editor: EditorConfig):
        super().__init__()
        self.unet, self.vae, self.text_encoder = unet, vae, text_encoder
        self.schedule = noise_schedule(editor)
        self.image_size = editor.image_size
        self.latent_shape = (vae.latent_channels, editor.image_size // 8, editor.image_size // 8)
        empty = tokenizer("", return_tensors="pt")["input_ids"][0]
        self.register_buffer("empty_ids", empty, persistent=False)
        self.pad_id = tokenizer.pad_token_id

    def train(self, mode: bool = True):
        """Frozen parts stay in eval mode (the text encoder's dropout would otherwise change its features)."""
        super().train(mode)
        self.vae.eval()
        self.text_encoder.eval()
        return self

    @torch.no_grad()
    def text_features(self, ids: torch.Tensor, mask: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """[B, T] instruction tokens -> [B, T', H]; rows where `drop` is set read the empty instruction."""
        if bool(drop.any()):
            width = max(ids.shape[1], len(self.empty_ids))
            ids = nn.functional.pad(ids, (0, width - ids.shape[1]), value=self.pad_id)
            mask = nn.functional.pad(mask, (0, width - mask.shape[1]))
            empty_ids = torch.full_like(ids[0], self.pad_id)
            empty_ids[:len(self.empty_ids)] = self.empty_ids
            ids = torch.where(drop[:, None], empty_ids, ids)
            mask = torch.where(drop[:, None], (torch.arange(width, device=ids.device) < len(self.empty_ids)).long(),
                               mask)
        return self.text_encoder(input_ids=ids, attention_mask=mask).last_hidden_state, mask

    @torch.no_grad()
    def image_latents(self, pixels: torch.Tensor, drop: torch.Tensor) -> torch.Tensor:
        """The input image's latent (unscaled, as diffusers' InstructPix2Pix); zero where `drop` is set."""
        return self.vae.encode(pixels) * (~drop)[:, None, None, None]

    def predict(self, noisy, timesteps, text, text_mask, image_latents) -> torch.Tensor:
        return self.unet(torch.cat([noisy, image_latents], dim=1), timesteps, encoder_hidden_states=text,
                         encoder_attention_mask=text_mask).sample

    def forward(self, batch: dict, noise, timesteps, drop_text, drop_image) -> tuple[torch.Tensor, torch.Tensor]:
        """(prediction, target) for the edited images noised to `timesteps`: the noise, or v."""
        with torch.no_grad():
            latents = self.vae.encode(batch["target_pixels"]) * self.vae.scaling_factor
        text, mask = self.text_features(batch["input_ids"], batch["attention_mask"], drop_text)
        noisy = self.schedule.add_noise(latents, noise, timesteps)
        pred = self.predict(noisy, timesteps, text, mask, self.image_latents(batch["source_pixels"], drop_image))
        target = noise if self.schedule.config.prediction_type == "epsilon" else \
            self.schedule.get_velocity(latents, noise, timesteps)
        return pred, target


def build_editor(cfg: RunConfig):
    """(ImageEditor, the text encoder's tokenizer). The UNet trains whole; it is saved whole when built here."""
    editor = cfg.model.editor
    torch.manual_seed(cfg.train.seed)
    text_encoder, tokenizer = load_text_encoder(editor.text_encoder)
    vae = load_vae(editor.vae)
    unet = build_unet(editor, vae.latent_channels, text_encoder.config.hidden_size)
    model = ImageEditor(unet, vae, text_encoder, tokenizer, editor)
    model.from_scratch = set() if editor.init_unet else {"unet"}
    if cfg.model.init_from:
        from mmtune.models.build import load_weights

        load_weights(model, Path(cfg.model.init_from), field="model.init_from")
    return model, tokenizer
