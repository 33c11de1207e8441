"""export_diffusers: an image editor with Stable Diffusion's parts (CLIP text tower, AutoencoderKL) becomes a
directory that diffusers' StableDiffusionInstructPix2PixPipeline loads and that edits as `mmtune edit` does; parts
the pipeline cannot hold are named."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("diffusers")

from diffusers import AutoencoderKL, StableDiffusionInstructPix2PixPipeline  # noqa: E402
from PIL import Image  # noqa: E402

from mmtune.cli import main  # noqa: E402
from mmtune.errors import ConfigError  # noqa: E402
from mmtune.infer.edit import edit_pixels  # noqa: E402
from mmtune.infer.export import META_FILE, export_diffusers, export_hf  # noqa: E402
from tests.helpers import SAMPLES, Saved, save_checkpoint  # noqa: E402

EDITOR = ["model.kind=image_editor", "train.objective=ip2p", "model.editor.image_size=32",
          "model.editor.unet={block_out_channels: [32, 64], norm_num_groups: 8}"]
CLIP = ["model.editor.text_encoder={name: clip, args: {config: {hidden_size: 32, intermediate_size: 64}}}",
        "model.editor.max_text_len=16"]
PROMPT = "make the circle red"


def tiny_kl_vae(path: Path) -> Path:
    """A random AutoencoderKL that, like Stable Diffusion's, downsamples by 8 (four blocks) into 4 channels."""
    torch.manual_seed(0)
    AutoencoderKL(down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4,
                  block_out_channels=(8, 8, 8, 8), norm_num_groups=4, latent_channels=4, layers_per_block=1,
                  sample_size=32).save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def editor(tmp_path_factory) -> Saved:
    """An editor checkpoint whose saved weights (UNet with its image channels, CLIP tower) are perturbed."""
    run_dir = tmp_path_factory.mktemp("editor")
    return save_checkpoint(run_dir, *EDITOR, *CLIP, f"model.editor.vae={tiny_kl_vae(run_dir / 'vae')}",
                           "model.editor.prediction=v_prediction")


def _image() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))


@pytest.mark.parametrize("steps, text_scale, image_scale, seed", [(4, 5.0, 1.7, 3), (3, 7.5, 1.2, 0)])
def test_pipeline_edits_as_mmtune_edit(tmp_path, editor, steps, text_scale, image_scale, seed):
    out = tmp_path / "sd"
    assert main(["export", "--ckpt", str(editor.ckpt), "--format", "diffusers", "--out", str(out)]) == 0
    pipeline = StableDiffusionInstructPix2PixPipeline.from_pretrained(out)
    pipeline.set_progress_bar_config(disable=True)
    assert pipeline.safety_checker is None
    theirs = pipeline(PROMPT, image=_image(), num_inference_steps=steps, guidance_scale=text_scale,
                      image_guidance_scale=image_scale, generator=torch.Generator().manual_seed(seed),
                      output_type="np").images[0]
    ours = edit_pixels(editor.model, editor.tokenizer, _image(), PROMPT, steps=steps, text_scale=text_scale,
                       image_scale=image_scale, seed=seed).permute(1, 2, 0).numpy()
    assert theirs.shape == ours.shape == (32, 32, 3) and theirs.std() > 0.01
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-4)
    other = edit_pixels(editor.model, editor.tokenizer, _image(), "remove the square", steps=steps,
                        text_scale=text_scale, image_scale=image_scale, seed=seed).permute(1, 2, 0).numpy()
    assert np.abs(other - theirs).max() > 1e-3  # the instruction matters, so the comparison can fail
    assert json.loads((out / META_FILE).read_text())["format"] == "diffusers"
    assert {"vocab.json", "merges.txt"} <= {p.name for p in (out / "tokenizer").iterdir()}


@pytest.mark.parametrize("overrides, message", [
    ([*CLIP, f"model.editor.vae={SAMPLES / 'vae'}"], r"model\.editor\.vae: .* is a TAEF2, not a diffusers "
                                                     r"AutoencoderKL"),
    (["model.editor.text_encoder.name=minilm"],
     r"model\.editor\.text_encoder: minilm has no place in a Stable Diffusion pipeline"),
])
def test_parts_the_pipeline_cannot_hold_are_named(tmp_path, overrides, message):
    vae = [] if any("vae=" in o for o in overrides) else [f"model.editor.vae={tiny_kl_vae(tmp_path / 'vae')}"]
    saved = save_checkpoint(tmp_path / "run", *EDITOR, *vae, *overrides)
    with pytest.raises(ConfigError, match=message):
        export_diffusers(saved.ckpt, tmp_path / "sd")
    assert not (tmp_path / "sd").exists()


def test_formats_refuse_the_other_model_kind(tmp_path, editor):
    with pytest.raises(ConfigError, match=r"--format hf exports model\.kind=lm checkpoints; .* holds a "
                                          r"model\.kind=image_editor model \(export it with --format diffusers\)"):
        export_hf(editor.ckpt, tmp_path / "hf")
    lm = save_checkpoint(tmp_path / "lm")
    with pytest.raises(ConfigError, match=r"--format diffusers exports model\.kind=image_editor checkpoints; .* "
                                          r"\(export it with --format hf or peft or llava or instructblip\)"):
        export_diffusers(lm.ckpt, tmp_path / "sd")
