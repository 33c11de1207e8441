"""Tiny Hugging Face CLIP/SigLIP directories (saved once per session) and one tiny configuration per encoder."""
from __future__ import annotations

import pytest
from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPVisionConfig, CLIPVisionModel,
                          SiglipImageProcessor, SiglipVisionConfig, SiglipVisionModel)

TINY_VISION = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=2,
                   image_size=32, patch_size=8)


def _processor(kind: str, size: int):
    if kind == "siglip":
        return SiglipImageProcessor(size={"height": size, "width": size})
    return CLIPImageProcessor(size={"shortest_edge": size}, crop_size={"height": size, "width": size})


def save_tower(path, kind: str, processor_size: int = TINY_VISION["image_size"]):
    """A random tiny vision tower of `kind` (clip | siglip | clip-full) saved with its image processor at `path`."""
    if kind == "clip-full":  # a whole CLIP model, as LLaVA's openai/clip-vit-large-patch14-336 directory is
        text = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=2,
                    vocab_size=64, bos_token_id=0, eos_token_id=1)
        model = CLIPModel(CLIPConfig(vision_config=TINY_VISION, text_config=text))
    elif kind == "siglip":
        model = SiglipVisionModel(SiglipVisionConfig(**TINY_VISION))
    else:
        model = CLIPVisionModel(CLIPVisionConfig(**TINY_VISION))
    model.save_pretrained(path)
    _processor(kind, processor_size).save_pretrained(path)
    return path


@pytest.fixture(scope="session")
def save_hf_tower():
    return save_tower


@pytest.fixture(scope="session")
def hf_dirs(tmp_path_factory) -> dict[str, str]:
    root = tmp_path_factory.mktemp("hf_towers")
    return {kind: str(save_tower(root / kind, kind)) for kind in ("clip", "siglip", "clip-full")}


@pytest.fixture(scope="session")
def tiny_cases(hf_dirs) -> dict[str, list[dict]]:
    """Encoder name -> argument sets of tiny towers; test_encoders.py checks every registered name has one."""
    return {
        "clip": [{"arch": "mmtune-vit-tiny"}],
        "hf_clip": [{"path": hf_dirs["clip"]}, {"path": hf_dirs["siglip"]}],
    }
