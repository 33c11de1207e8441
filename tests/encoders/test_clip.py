"""clip and hf_clip: the chosen layer is the library's own hidden state, weights load from local files only."""
from __future__ import annotations

import json
from pathlib import Path

import open_clip
import pytest
import torch
from safetensors.torch import save_file
from transformers import BertConfig, CLIPModel, CLIPVisionModel, SiglipVisionModel

from mmtune.config import ComponentConfig
from mmtune.encoders import build_encoder
from mmtune.encoders.clip import MODEL_CONFIGS
from mmtune.errors import ConfigError


def clip(**args):
    return build_encoder(ComponentConfig("clip", args))


def hf_clip(**args):
    return build_encoder(ComponentConfig("hf_clip", args))


@pytest.fixture(scope="module")
def tiny_clip(tmp_path_factory):
    """A whole random mmtune-vit-tiny CLIP model and its weights as a local safetensors file."""
    open_clip.add_model_config(MODEL_CONFIGS)
    model = open_clip.create_model("mmtune-vit-tiny").eval()
    path = tmp_path_factory.mktemp("open_clip") / "tiny.safetensors"
    save_file(model.state_dict(), path)
    return model, str(path)


def test_last_layer_cls_token_is_what_open_clip_pools(tiny_clip):
    model, path = tiny_clip
    pixels = torch.randn(2, 3, 32, 32)
    cls = clip(arch="mmtune-vit-tiny", pretrained=path, tokens="cls")(pixels)  # [2, 1, 64]
    pooled = model.visual.ln_post(cls[:, 0]) @ model.visual.proj
    torch.testing.assert_close(pooled, model.encode_image(pixels))


def test_penultimate_layer_is_the_input_of_the_last_block(tiny_clip):
    model, path = tiny_clip
    pixels = torch.randn(2, 3, 32, 32)
    last = clip(arch="mmtune-vit-tiny", pretrained=path, tokens="all")(pixels)
    penultimate = clip(arch="mmtune-vit-tiny", pretrained=path, tokens="all", layer=-2)(pixels)
    torch.testing.assert_close(model.visual.transformer.resblocks[-1](penultimate), last)
    patches = clip(arch="mmtune-vit-tiny", pretrained=path, layer=-2)(pixels)
    torch.testing.assert_close(patches, penultimate[:, 1:])  # LLaVA: penultimate layer, CLS dropped


def test_pretrained_must_be_a_local_file():
    with pytest.raises(ConfigError, match=r"model\.media\.image\.encoder\.args\.pretrained: no file openai .*nothing is downloaded"):
        clip(arch="ViT-B-32", pretrained="openai")


def test_pretrained_of_another_arch_is_refused(tiny_clip):
    with pytest.raises(ConfigError, match=r"model\.media\.image\.encoder\.args\.pretrained: cannot load .*tiny\.safetensors "
                                          r"into mmtune-vit-small"):
        clip(arch="mmtune-vit-small", pretrained=tiny_clip[1])


@pytest.mark.parametrize("arch, message", [
    ("ViT-B-33", r"unknown open_clip architecture 'ViT-B-33'; closest: \['ViT-B-32'"),
    ("hf-hub:timm/ViT-B-16-SigLIP", r"unknown open_clip architecture 'hf-hub:timm/ViT-B-16-SigLIP'"),
    ("ViT-B-16-SigLIP", r"ViT-B-16-SigLIP has a timm or ResNet image tower"),
    ("RN50", r"RN50 has a timm or ResNet image tower"),
    ("xlm-roberta-base-ViT-B-32", r"text tower from the Hugging Face hub \(xlm-roberta-base\)"),
])
def test_unusable_arch_is_refused_before_building(arch, message):
    with pytest.raises(ConfigError, match=rf"model\.media\.image\.encoder\.args\.arch: .*{message}"):
        clip(arch=arch)


def test_mmtune_small_arch_builds():
    encoder = clip(arch="mmtune-vit-small")
    assert (encoder.image_size, encoder.num_tokens, encoder.out_dim) == (96, 36, 192)


def test_open_clip_vit_b_32_builds():
    encoder = clip(arch="ViT-B-32", layer=-2)  # about 3 s on 2 CPU cores
    assert (encoder.image_size, encoder.num_tokens, encoder.out_dim) == (224, 49, 768)
    assert len(encoder.visual.transformer.resblocks) == 11
    with torch.no_grad():
        assert encoder(torch.randn(1, 3, 224, 224)).shape == (1, 49, 768)


@pytest.mark.parametrize("kind, tower", [("clip", CLIPVisionModel), ("siglip", SiglipVisionModel)])
@pytest.mark.parametrize("layer", [-1, -2, 0])
def test_hf_layer_is_the_full_models_hidden_state(hf_dirs, kind, tower, layer):
    full = tower.from_pretrained(hf_dirs[kind]).eval()
    pixels = torch.randn(2, 3, 32, 32)
    expected = full(pixel_values=pixels, output_hidden_states=True).hidden_states[1:][layer]  # [0] is the embedding
    torch.testing.assert_close(hf_clip(path=hf_dirs[kind], layer=layer, tokens="all")(pixels), expected)


def test_hf_whole_clip_directory_gives_its_vision_tower(hf_dirs):
    full = CLIPModel.from_pretrained(hf_dirs["clip-full"]).eval()
    pixels = torch.randn(2, 3, 32, 32)
    expected = full.vision_model(pixel_values=pixels, output_hidden_states=True).hidden_states[-2][:, 1:]
    encoder = hf_clip(path=hf_dirs["clip-full"], layer=-2)
    assert encoder.num_tokens == 16 and len(encoder.model.encoder.layers) == 2
    torch.testing.assert_close(encoder(pixels), expected)


def test_hf_siglip_has_no_cls_token(hf_dirs):
    assert hf_clip(path=hf_dirs["siglip"], tokens="all").num_tokens == 16
    with pytest.raises(ConfigError, match=r"model\.media\.image\.encoder\.args\.tokens: siglip_vision_model has no class token"):
        hf_clip(path=hf_dirs["siglip"], tokens="cls")


def test_hf_directory_without_weights_is_refused(tmp_path, save_hf_tower):
    save_hf_tower(tmp_path, "clip")
    (tmp_path / "model.safetensors").unlink()
    with pytest.raises(ConfigError, match=rf"model\.media\.image\.encoder\.args\.path: cannot load {tmp_path}"):
        hf_clip(path=str(tmp_path))


def test_hf_weights_of_another_tower_are_refused(tmp_path, hf_dirs, save_hf_tower):
    save_hf_tower(tmp_path, "clip")
    siglip_weights = Path(hf_dirs["siglip"]) / "model.safetensors"
    (tmp_path / "model.safetensors").write_bytes(siglip_weights.read_bytes())  # under a CLIP config
    shape = r"position_embedding\.weight \(file \[16, 32\], model \[17, 32\]\)"
    with pytest.raises(ConfigError, match=rf"weights of the vision tower are missing .* another shape.*{shape}"):
        hf_clip(path=str(tmp_path))


def test_hf_weights_missing_a_block_are_refused(tmp_path, save_hf_tower):
    save_hf_tower(tmp_path, "clip")  # 3 blocks of weights, a config claiming 4
    config = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**config, "num_hidden_layers": 4}))
    with pytest.raises(ConfigError, match=r"16 weights of the vision tower are missing .* \['encoder\.layers\.3\."):
        hf_clip(path=str(tmp_path))
    assert hf_clip(path=str(tmp_path), layer=-2).num_tokens == 16  # blocks 0-2 are all there


def test_hf_directory_without_processor_is_refused(tmp_path, save_hf_tower):
    save_hf_tower(tmp_path, "clip")
    (tmp_path / "preprocessor_config.json").unlink()
    with pytest.raises(ConfigError, match=rf"model\.media\.image\.encoder\.args\.path: {tmp_path} has no preprocessor_config\.json"):
        hf_clip(path=str(tmp_path))


def test_hf_processor_of_another_size_is_refused(tmp_path, save_hf_tower):
    save_hf_tower(tmp_path, "clip", processor_size=48)
    with pytest.raises(ConfigError, match=r"image processor .* gives \[3, 48, 48\], the model takes \[3, 32, 32\]"):
        hf_clip(path=str(tmp_path))


def test_hf_path_must_hold_a_clip_or_siglip_model(tmp_path):
    with pytest.raises(ConfigError, match=r"model\.media\.image\.encoder\.args\.path: .* \(no config\.json\)"):
        hf_clip(path=str(tmp_path))
    BertConfig(hidden_size=8, num_hidden_layers=1, num_attention_heads=1, intermediate_size=8).save_pretrained(tmp_path)
    with pytest.raises(ConfigError, match=r"holds a bert model; hf_clip loads clip_vision_model, siglip_vision_model"):
        hf_clip(path=str(tmp_path))
