"""CLIP-family vision towers as encoders: open_clip architectures (`clip`) and Hugging Face CLIP/SigLIP directories
(`hf_clip`).

Both return the per-token output of one hidden layer, [B, N, D], before any final norm, as LLaVA feeds its projector
(layer -2, patch tokens). Blocks after the chosen layer, the final norm and the pooling head are not kept: they would
cost compute and leave parameters without gradients, which DDP rejects when the encoder is trained.
Nothing is downloaded: weights come from local files only.
"""
from __future__ import annotations

import contextlib
import difflib
import functools
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Literal, NamedTuple

import open_clip
import torch
from PIL import Image
from torch import nn
from transformers import AutoConfig, AutoImageProcessor, CLIPVisionModel, SiglipVisionModel

from mmtune.data.media import ImageLoader
from mmtune.errors import ConfigError

MODEL_CONFIGS = Path(__file__).parent / "model_configs"
"""mmtune's own open_clip architectures (small towers for tests and CPU demos), one JSON file each."""

Tokens = Literal["patch", "cls", "all"]


@dataclass
class OpenClipArgs:
    arch: str = ""
    """open_clip architecture: a name in open_clip.list_models() (ViT-L-14-336...) or mmtune-vit-tiny/-small."""
    pretrained: str = ""
    """Local open_clip checkpoint of the whole CLIP model (.safetensors, .pt, .bin); empty: random init."""
    layer: int = -1
    """Block whose output is used, indexed like a Python list: -1 the last, -2 the penultimate (LLaVA's choice)."""
    tokens: Tokens = "patch"
    """patch: the grid tokens (LLaVA drops CLS); cls: the class token only; all: class token, then the grid."""

    def __post_init__(self):
        if not self.arch:
            raise ConfigError("model.media.image.encoder.args.arch must be set, e.g. ViT-L-14-336 or mmtune-vit-tiny")


@dataclass
class HFClipArgs:
    path: str = ""
    """Local Hugging Face directory of a CLIP or SigLIP model (vision-only or whole) and its image processor."""
    layer: int = -1
    """Block whose output is used, indexed like a Python list: -1 the last, -2 the penultimate (LLaVA's choice)."""
    tokens: Tokens = "patch"
    """patch: the grid tokens; cls: the class token only (CLIP only; SigLIP has none); all: every token."""

    def __post_init__(self):
        if not self.path:
            raise ConfigError("model.media.image.encoder.args.path must be set to a local Hugging Face model directory")


class OpenClipEncoder(nn.Module):
    """The vision tower of an open_clip model, cut after `layer`; preprocessing is open_clip's validation transform."""

    Args = OpenClipArgs

    def __init__(self, args: OpenClipArgs):
        super().__init__()
        keep = _absolute_layer(args.layer, _open_clip_layers(args.arch))
        model, self.transform = _create_open_clip(args.arch, args.pretrained)
        self.visual = model.visual  # the text tower is dropped with `model`
        self.visual.prune_intermediate_layers([keep], prune_norm=True, prune_head=True)
        self.tokens = args.tokens
        self.out_dim: int = self.visual.transformer.width
        self.num_tokens: int = _token_count(args.tokens, math.prod(self.visual.grid_size), has_cls=True)
        self.image_size: int = self.visual.image_size[0]
        self.item_shape = (3, self.image_size, self.image_size)
        self.preprocess = ImageLoader(self.transform)
        self.from_scratch = not args.pretrained
        """Random weights: checkpoints must save the tower whole, as it cannot be re-read from a source."""

    def checkpoint_activations(self) -> None:
        """Recompute the tower's blocks in the backward pass (open_clip checkpoints them non-reentrantly)."""
        self.visual.set_grad_checkpointing(True)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised pixels -> [B, N, D] features of the kept last block."""
        out = self.visual.forward_intermediates(
            pixel_values, indices=[-1], intermediates_only=True, output_fmt="NLC", output_extra_tokens=True)
        return _select(self.tokens, out["image_intermediates_prefix"][0], out["image_intermediates"][0])


def _open_clip_layers(arch: str) -> int:
    """Block count of an open_clip ViT tower; ConfigError for names open_clip lacks or towers this encoder can't cut."""
    _register_model_configs()
    if arch not in open_clip.list_models():  # also refuses hf-hub:/local-dir: schemas, which would download
        close = difflib.get_close_matches(arch, open_clip.list_models(), n=3)
        ours = sorted(p.stem for p in MODEL_CONFIGS.glob("*.json"))
        raise ConfigError(f"model.media.image.encoder.args.arch: unknown open_clip architecture {arch!r}; closest: {close}; "
                          f"mmtune's own: {ours}; all: open_clip.list_models()")
    cfg = open_clip.get_model_config(arch)
    vision = cfg["vision_cfg"]
    if "timm_model_name" in vision or not isinstance(vision.get("layers"), int):
        raise ConfigError(f"model.media.image.encoder.args.arch: {arch} has a timm or ResNet image tower; the clip encoder "
                          "takes open_clip ViT towers (use hf_clip for a Hugging Face directory)")
    if "hf_model_name" in cfg["text_cfg"]:
        raise ConfigError(f"model.media.image.encoder.args.arch: {arch} builds its text tower from the Hugging Face hub "
                          f"({cfg['text_cfg']['hf_model_name']}), which mmtune does not download")
    return vision["layers"]


@functools.cache
def _register_model_configs() -> None:
    """Make mmtune's architectures known to open_clip, once, when the first encoder is built (not at import)."""
    open_clip.add_model_config(MODEL_CONFIGS)


def _create_open_clip(arch: str, pretrained: str) -> tuple[nn.Module, Callable[[Image.Image], torch.Tensor]]:
    """The whole CLIP model (random, or with the weights in file `pretrained`) and its validation transform."""
    if pretrained and not Path(pretrained).is_file():
        raise ConfigError(f"model.media.image.encoder.args.pretrained: no file {pretrained} (local weights only; nothing is "
                          "downloaded)")
    try:
        with _quiet_random_init_warning():
            model, _, transform = open_clip.create_model_and_transforms(
                arch,
                pretrained=str(Path(pretrained).resolve()) if pretrained else None,  # a path is never a tag
                force_patch_dropout=0.0,  # dropped patches would change N, which the LLM row layout relies on
                pretrained_text=False)
    except Exception as e:  # torch, safetensors and open_clip each raise their own types for a bad file
        if not pretrained:
            raise
        raise ConfigError(f"model.media.image.encoder.args.pretrained: cannot load {pretrained} into {arch}: {e}") from e
    if not pretrained:
        _say_random_init(arch)
    return model, transform


@contextlib.contextmanager
def _quiet_random_init_warning():
    """open_clip warns through `logging.warning` each time a tower is built without weights (which also installs a
    root handler as a side effect); mmtune says it once, in its own words."""
    def drop(record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("No pretrained weights loaded")

    root = logging.getLogger()
    placeholder = logging.NullHandler() if not root.handlers else None  # keeps logging.warning from configuring
    if placeholder:
        root.addHandler(placeholder)
    root.addFilter(drop)
    try:
        yield
    finally:
        root.removeFilter(drop)
        if placeholder:
            root.removeHandler(placeholder)


@functools.cache
def _say_random_init(arch: str) -> None:
    logging.getLogger("mmtune").warning(
        f"model.media.image.encoder: {arch} starts from random weights (model.media.image.encoder.args.pretrained is empty); intended for "
        f"towers trained from scratch or kept random, like the demo's")


class _Tower(NamedTuple):
    model: type
    has_cls: bool
    load_kwargs: dict


# Keyed by the vision config's model_type, which full and vision-only directories both declare.
_HF_TOWERS = {
    "clip_vision_model": _Tower(CLIPVisionModel, True, {}),
    "siglip_vision_model": _Tower(SiglipVisionModel, False, {"vision_use_head": False}),
}


class HFClipEncoder(nn.Module):
    """A transformers CLIPVisionModel or SiglipVisionModel from a local directory, built only up to `layer`."""

    Args = HFClipArgs

    def __init__(self, args: HFClipArgs):
        super().__init__()
        path = Path(args.path)
        vision = _hf_vision_config(path)
        tower = _HF_TOWERS[vision.model_type]
        if args.tokens == "cls" and not tower.has_cls:
            raise ConfigError(f"model.media.image.encoder.args.tokens: {vision.model_type} has no class token; use patch")
        keep = _absolute_layer(args.layer, vision.num_hidden_layers)
        self.transform = _hf_transform(path, vision.image_size)
        self.model = _load_hf_tower(tower, path, num_layers=keep + 1)
        self.model.post_layernorm = nn.Identity()  # last_hidden_state is then the raw output of block `keep`
        self.has_cls = tower.has_cls
        self.tokens = args.tokens
        self.out_dim: int = vision.hidden_size
        self.image_size: int = vision.image_size
        self.num_tokens: int = _token_count(args.tokens, (vision.image_size // vision.patch_size) ** 2, tower.has_cls)
        self.item_shape = (3, self.image_size, self.image_size)
        self.preprocess = ImageLoader(self.transform)
        self.from_scratch = False

    def checkpoint_activations(self) -> None:
        """Recompute the tower's layers in the backward pass (non-reentrant, as for the LLM)."""
        self.model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] normalised pixels -> [B, N, D] features of the last built block."""
        hidden = self.model(pixel_values=pixel_values).last_hidden_state  # [B, (1 +) grid, D]
        if self.has_cls:
            return _select(self.tokens, hidden[:, :1], hidden[:, 1:])
        return hidden


class HFImageTransform:
    """RGB PIL image -> [3, H, W] through a transformers image processor; a plain class so DataLoader workers can
    pickle it."""

    def __init__(self, processor):
        self.processor = processor

    def __call__(self, image: Image.Image) -> torch.Tensor:
        return self.processor(images=image, return_tensors="pt")["pixel_values"][0]


def _hf_vision_config(path: Path):
    if not (path / "config.json").is_file():
        raise ConfigError(f"model.media.image.encoder.args.path: {path} is not a Hugging Face model directory (no config.json)")
    config = AutoConfig.from_pretrained(path, local_files_only=True)
    vision = getattr(config, "vision_config", config)
    if vision.model_type not in _HF_TOWERS:
        raise ConfigError(f"model.media.image.encoder.args.path: {path} holds a {config.model_type} model; hf_clip loads "
                          f"{', '.join(_HF_TOWERS)} (or full CLIP/SigLIP models)")
    return vision


def _load_hf_tower(tower: _Tower, path: Path, num_layers: int) -> nn.Module:
    """Build the first `num_layers` blocks and load their weights; the checkpoint's later blocks are not read in.

    transformers' load report is silenced: it lists those blocks (and a full model's text tower) as unexpected; the
    weights that matter, missing or of another shape, are checked here and named in the error.
    """
    report = logging.getLogger("transformers.modeling_utils")
    level = report.level
    report.setLevel(logging.ERROR)
    try:
        model, info = tower.model.from_pretrained(
            path, num_hidden_layers=num_layers, dtype=torch.float32, local_files_only=True,
            output_loading_info=True, ignore_mismatched_sizes=True, **tower.load_kwargs)
    except OSError as e:  # e.g. no weight file in the directory
        raise ConfigError(f"model.media.image.encoder.args.path: cannot load {path}: {e}") from None
    finally:
        report.setLevel(level)
    bad = [f"{key} (file {list(file)}, model {list(want)})" for key, file, want in sorted(info["mismatched_keys"])]
    bad += sorted(info["missing_keys"])
    if bad:
        raise ConfigError(f"model.media.image.encoder.args.path: {len(bad)} weights of the vision tower are missing from {path} "
                          f"or have another shape, so they would be random: {bad[:3]}")
    return model


def _hf_transform(path: Path, image_size: int) -> HFImageTransform:
    """The directory's image processor, checked now (not in a data worker) to give what the model takes."""
    try:
        transform = HFImageTransform(AutoImageProcessor.from_pretrained(path, local_files_only=True))
    except OSError:
        raise ConfigError(f"model.media.image.encoder.args.path: {path} has no preprocessor_config.json; save the model's image "
                          "processor there (e.g. CLIPImageProcessor(...).save_pretrained(path))") from None
    shape = tuple(transform(Image.new("RGB", (image_size, image_size))).shape)
    if shape != (3, image_size, image_size):
        raise ConfigError(f"model.media.image.encoder.args.path: the image processor in {path} gives {list(shape)}, "
                          f"the model takes [3, {image_size}, {image_size}]")
    return transform


def _absolute_layer(layer: int, num_layers: int) -> int:
    if not -num_layers <= layer < num_layers:
        raise ConfigError(f"model.media.image.encoder.args.layer: {layer} is out of range for a tower of {num_layers} blocks "
                          f"(use {-num_layers}..{num_layers - 1})")
    return layer % num_layers


def _token_count(tokens: str, num_patches: int, has_cls: bool) -> int:
    return {"patch": num_patches, "cls": 1, "all": num_patches + int(has_cls)}[tokens]


def _select(tokens: str, cls: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """cls [B, 1, D], patches [B, P, D] -> the configured tokens."""
    if tokens == "patch":
        return patches
    if tokens == "cls":
        return cls
    return torch.cat([cls, patches], dim=1)
