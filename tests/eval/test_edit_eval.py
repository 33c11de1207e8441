"""`mmtune eval --task edit`: PSNR and the region scores on known cases, CLIP directional similarity's shape and
symmetries on a real photo, and the command on a trained editor (its identity baseline recomputed here)."""
import io
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from data_builders.synth.edits import write_edit_shards
from mmtune.eval.edit import MAX_PSNR, ClipDirection, item_scores, load_edit_items, psnr

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def edit_shards(tmp_path_factory):
    return write_edit_shards(tmp_path_factory.mktemp("edits"), "eval", 24, seed=3)


def test_psnr_of_known_errors():
    a = np.zeros((3, 4, 4), np.float32)
    assert psnr(a, a + 0.1) == pytest.approx(20.0)
    assert psnr(a, a) == MAX_PSNR
    where = np.zeros((4, 4), bool)
    where[0] = True
    b = a.copy()
    b[:, 0] = 0.01
    b[:, 1:] = 0.5
    assert psnr(a, b, where) == pytest.approx(40.0) and psnr(a, b, ~where) == pytest.approx(10 * np.log10(4))


def test_region_scores_of_the_unchanged_input_and_of_the_target(edit_shards):
    items = load_edit_items(edit_shards, 32).items
    assert len(items) == 24 and all(it.mask is not None and it.captions for it in items)
    for it in items:
        unchanged, perfect = item_scores(it, it.source), item_scores(it, it.target)
        assert unchanged["mse"] == unchanged["mse_identity"] > 1e-3
        assert unchanged["region_improved"] == 0 and unchanged["inside_change"] == unchanged["outside_change"] == 0
        assert perfect["mse"] == perfect["mse_region"] == 0 and perfect["region_improved"] == 1
        assert perfect["outside_change"] == 0 < perfect["inside_change"], it.id  # the mask holds every change


def test_clip_directional_similarity_on_a_photo():
    photo = Image.open(ROOT / "samples" / "images" / "example.jpg").convert("RGB")
    edits = [ImageOps.mirror(photo), ImageOps.grayscale(photo).convert("RGB"), photo]
    captions = [("a photo of a man", "a mirrored photo of a man"), ("a colour photo", "a black and white photo"),
                ("a photo", "the same photo")]
    clip = ClipDirection("mmtune-vit-tiny")
    forward = clip([photo] * 3, edits, captions)
    assert forward.shape == (3,) and bool(((forward.abs() <= 1) & forward.isfinite()).all())
    assert float(forward[2]) == 0  # no image change: no direction
    reversed_text = clip([photo] * 3, edits, [(b, a) for a, b in captions])
    undone = clip(edits, [photo] * 3, [(b, a) for a, b in captions])
    np.testing.assert_allclose(reversed_text.numpy(), -forward.numpy(), atol=1e-6)
    np.testing.assert_allclose(undone.numpy(), forward.numpy(), atol=1e-6)
    assert float(forward[:2].abs().min()) > 0


def test_eval_command_scores_an_editor(tmp_path, edit_shards, capsys):
    pytest.importorskip("diffusers")
    from mmtune import finetune, load_config
    from mmtune.cli import main
    from tests.models.test_editor import EDITOR

    finetune(load_config(None, [*EDITOR, f"data.train={edit_shards}", f"train.out_dir={tmp_path / 'run'}",
                                "train.steps=2", "train.batch_size=4"]))
    assert main(["eval", "--ckpt", str(tmp_path / "run"), "--task", "edit", "--data", *edit_shards, "--out",
                 str(tmp_path / "eval"), "--limit", "8", "--steps", "2", "--clip-arch", "mmtune-vit-tiny"]) == 0
    result = json.loads((tmp_path / "eval" / "results.json").read_text())
    pairs = [(np.asarray(Image.open(io.BytesIO(s.data["0.png"])), np.float64) / 255,
              np.asarray(Image.open(io.BytesIO(s.data["1.png"])), np.float64) / 255) for s in _samples(edit_shards)[:8]]
    identity = 10 * np.log10(1 / np.mean([((a - b) ** 2).mean() for a, b in pairs]))  # pooled over the images
    assert result["count"] == 8 and result["psnr_identity"] == pytest.approx(identity)
    assert result["sampling"]["steps"] == 2 and result["counts"] == {"no_region": 0, "no_captions": 0}
    assert -1 <= result["clip_directional"] <= 1 and 0 <= result["region_improved"] <= 1
    predictions = [json.loads(l) for l in (tmp_path / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 8 and all((tmp_path / "eval" / p["image"]).is_file() for p in predictions)
    assert result["psnr"] == pytest.approx(10 * np.log10(1 / np.mean([p["mse"] for p in predictions])))
    assert predictions[0]["psnr"] == pytest.approx(10 * np.log10(1 / predictions[0]["mse"]))
    out = capsys.readouterr().out
    assert f"| psnr_identity | {identity:.4f} |" in out and f"| psnr/{predictions[0]['task']} |" in out


def test_eval_edit_names_a_sample_that_is_not_a_triplet(tmp_path):
    from data_builders.synth.shapes import write_demo_shards
    from mmtune.errors import DataError

    shards = write_demo_shards(tmp_path, 2, 1)["train"]
    with pytest.raises(DataError, match=r"train-000000.tar .*sample 'shapes-0-0000000'.*not an edit triplet"):
        load_edit_items(shards, 32)
    assert load_edit_items(shards, 32, on_error="skip").counts == {"skipped_bad_record": 2}


def _samples(shards):
    from mmtune.data.stream import ShardStream

    return [item.value for item in ShardStream(shards, lambda s: s, shuffle=False)]
