"""The InstructPix2Pix editor: zero-initialised image channels leave the UNet's output unchanged, conditioning
dropout happens at its configured rates, the editor trains through the one trainer (loss falls, resume is exact),
and `mmtune edit` writes an image."""
import copy
import json
from pathlib import Path

import pytest
import torch

pytest.importorskip("diffusers")

import mmtune  # noqa: E402
from data_builders.synth.edits import write_edit_shards  # noqa: E402
from mmtune.cli import main  # noqa: E402
from mmtune.config import RunConfig  # noqa: E402
from mmtune.models.editor import SMALL_UNET, expand_input_channels  # noqa: E402
from mmtune.models.objectives import IP2P, IP2PArgs  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EDITOR = ["model.kind=image_editor", "train.objective=ip2p", f"model.editor.vae={ROOT / 'samples' / 'vae'}",
          "model.editor.image_size=32", "model.editor.unet={block_out_channels: [32, 64], norm_num_groups: 8}"]


def test_new_input_channels_start_at_zero():
    from diffusers import UNet2DConditionModel

    torch.manual_seed(0)
    base = UNet2DConditionModel(**{**SMALL_UNET, "sample_size": 4, "in_channels": 4, "out_channels": 4,
                                   "cross_attention_dim": 16, "block_out_channels": (32, 64), "norm_num_groups": 8})
    wide = expand_input_channels(copy.deepcopy(base), 4)
    noisy, image, text = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.randn(2, 3, 16)
    t = torch.tensor([10, 500])
    with torch.no_grad():
        torch.testing.assert_close(wide(torch.cat([noisy, image], 1), t, text).sample, base(noisy, t, text).sample)
    assert wide.config.in_channels == 8 and wide.conv_in.weight[:, 4:].abs().sum() == 0


def test_conditioning_dropout_rates():
    objective = IP2P.__new__(IP2P)
    objective.args = IP2PArgs(drop_text=0.1, drop_image=0.2, drop_both=0.05)
    drop_text, drop_image = objective.dropout(200_000, "cpu", torch.Generator().manual_seed(0))
    rates = {"text only": (drop_text & ~drop_image).float().mean(), "image only": (drop_image & ~drop_text).float().mean(),
             "both": (drop_text & drop_image).float().mean()}
    for name, want in {"text only": 0.1, "image only": 0.2, "both": 0.05}.items():
        assert float(rates[name]) == pytest.approx(want, abs=0.004), name


def _metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _config(tmp_path, name, *overrides) -> RunConfig:
    train = write_edit_shards(tmp_path / "d", "train", 64) if not (tmp_path / "d").exists() else \
        sorted(str(p) for p in (tmp_path / "d").glob("train-*.tar"))
    return mmtune.load_config(None, [*EDITOR, f"data.train={train}", f"train.out_dir={tmp_path / name}",
                                     "train.batch_size=8", "train.warmup=5", "train.lr=1e-3", "train.log_every=1",
                                     "train.eval_every=1000", "train.save_every=1000", *overrides])


def test_editor_trains_and_edits(tmp_path):
    evals = write_edit_shards(tmp_path / "e", "eval", 16, seed=1)
    cfg = _config(tmp_path, "run", f"data.eval={evals}", "train.steps=40", "train.eval_every=40",
                  "train.eval_batches=2")
    summary = mmtune.finetune(cfg)
    records = _metrics(tmp_path / "run")
    evals = [r["eval_loss"] for r in records if "eval_loss" in r]
    assert len(evals) == 2 and evals[1] < 0.93 * evals[0]  # seeded eval noise: the same draws both times
    assert next(r for r in records if "loss" in r)["images"] == 8  # the count the loss is normalised by
    image = tmp_path / "in.png"
    from data_builders.synth.edits import generate

    image.write_bytes(next(generate(1, seed=2)).data["0.png"])
    out = tmp_path / "out.png"
    assert main(["edit", "--ckpt", summary["checkpoint"], "--image", str(image), "--prompt", "remove the circle",
                 "--out", str(out), "--steps", "4"]) == 0
    from PIL import Image

    assert Image.open(out).size == (32, 32)


def test_editor_resume_is_exact(tmp_path):
    mmtune.finetune(_config(tmp_path, "whole", "train.steps=6"))
    mmtune.finetune(_config(tmp_path, "split", "train.steps=6", "train.save_every=3"))
    losses = {r["step"]: r["loss"] for r in _metrics(tmp_path / "split")}
    import shutil

    shutil.rmtree(tmp_path / "split" / "checkpoints" / "step-000006")
    mmtune.finetune(_config(tmp_path, "split", "train.steps=6", "train.save_every=3"), resume=True)
    resumed = {r["step"]: r["loss"] for r in _metrics(tmp_path / "split")}
    whole = {r["step"]: r["loss"] for r in _metrics(tmp_path / "whole")}
    assert resumed == whole == losses
