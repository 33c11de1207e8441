"""The training loop end to end on tiny models: every family trains, accumulation is token-weighted, the
non-finite guard counts and aborts, bad data is named or counted, and a run leaves metrics, a plot and a config."""
import json
import random

import pytest
import torch
from PIL import Image

import mmtune
from mmtune.data.packing import DataState
from mmtune.data.sample import Media, Message, Sample
from mmtune.data.shards import ShardSink
from mmtune.errors import DataError, TrainingError
from mmtune.infer.generate import generate, load_checkpoint
from mmtune.models.llm import TINY
from mmtune.models import objectives
from mmtune.train.trainer import make_batches, sample_encoder
from tests.helpers import VLM, XATTN, image_sample, text_sample, tiny_config, write_image_shards, write_text_shards


def _metrics(run_dir):
    return [json.loads(l) for l in (run_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("family", sorted(TINY))
def test_every_tiny_family_trains(tmp_path, family):
    shards = write_text_shards(tmp_path / "d", 16)
    cfg = tiny_config(tmp_path / "run", shards, f"model.llm=tiny:{family}", "train.steps=2", "train.log_every=1")
    summary = mmtune.finetune(cfg)
    losses = [r["loss"] for r in _metrics(tmp_path / "run") if "loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
    assert (tmp_path / "run" / "checkpoints" / "step-000002" / "model.safetensors").is_file()
    assert summary["step"] == 2


def test_run_leaves_metrics_plot_config_and_eval_loss_drops(tmp_path):
    shards = write_text_shards(tmp_path / "d", 32)
    evals = write_text_shards(tmp_path / "d", 8, prefix="eval")
    cfg = tiny_config(tmp_path / "run", shards, f"data.eval={evals}", "train.steps=30", "train.lr=3e-3",
                      "train.sample_prompts=[alpha beta gamma]",
                      "train.eval_every=30", "train.log_every=5")
    mmtune.finetune(cfg)
    run = tmp_path / "run"
    evals = [r["eval_loss"] for r in _metrics(run) if "eval_loss" in r]
    assert len(evals) == 2 and evals[-1] < evals[0] - 1.0
    assert (run / "loss_curve.png").stat().st_size > 5000
    assert mmtune.load_config(run / "config.yaml") == cfg
    assert "eval loss" in (run / "train.log").read_text() and "sample | 'alpha beta gamma' ->" in (run / "train.log").read_text()


def _first_step(tmp_path, name, *overrides):
    shards = write_text_shards(tmp_path / "d", 8) if not (tmp_path / "d").exists() else \
        sorted(str(p) for p in (tmp_path / "d").glob("train-*.tar"))
    cfg = tiny_config(tmp_path / name, shards, "train.steps=1", "train.log_every=1", "data.shuffle=false",
                      "data.group_by_length=false", "train.clip=0", *overrides)
    torch.manual_seed(0)
    mmtune.finetune(cfg)
    from safetensors.torch import load_file

    weights = load_file(str(tmp_path / name / "checkpoints" / "step-000001" / "model.safetensors"))
    return _metrics(tmp_path / name)[0]["loss"], weights


def test_gradient_accumulation_is_token_weighted(tmp_path):
    loss_a, w_a = _first_step(tmp_path, "big", "train.batch_size=8", "train.grad_accum=1")
    loss_b, w_b = _first_step(tmp_path, "accum", "train.batch_size=2", "train.grad_accum=4")
    assert loss_a == pytest.approx(loss_b, rel=1e-5)
    for k in w_a:
        torch.testing.assert_close(w_a[k], w_b[k], atol=2e-6, rtol=1e-4)


def test_non_finite_steps_are_skipped_then_abort(tmp_path, monkeypatch):
    class NanLoss(objectives.SFT):
        def __call__(self, model, batch):
            out = super().__call__(model, batch)
            return objectives.LossOut(out.loss_sum * float("nan"), out.count)

    monkeypatch.setitem(objectives.OBJECTIVES, "sft", NanLoss)
    shards = write_text_shards(tmp_path / "d", 16)
    cfg = tiny_config(tmp_path / "run", shards, "train.max_bad_steps=2", "train.steps=10")
    with pytest.raises(TrainingError, match=r"3 non-finite steps exceed train\.max_bad_steps=2"):
        mmtune.finetune(cfg)
    assert "non-finite" in (tmp_path / "run" / "train.log").read_text()


def _mismatch_shards(out):
    import io
    import tarfile

    rng = random.Random(0)
    with ShardSink(out, "train") as sink:
        for i in range(6):
            sink.write(text_sample(i, rng))
    bad = image_sample(99, rng)
    bad.media.append(Media("image", "extra.png"))
    # Written around ShardSink's validation, as a corrupt or hand-made shard would be.
    with tarfile.open(out / "train-000001.tar", "w") as tf:
        for ext, data in {"json": json.dumps(bad.to_json()).encode(), "0.png": bad.data["0.png"],
                          "extra.png": bad.data["0.png"]}.items():
            info = tarfile.TarInfo(f"bad.{ext}")
            info.size = len(data)
            tf.addfile(info, io.BytesIO(data))
    return sorted(str(p) for p in out.glob("train-*.tar"))


def test_placeholder_mismatch_in_a_shard_is_named(tmp_path):
    shards = _mismatch_shards(tmp_path / "d")
    cfg = tiny_config(tmp_path / "run", shards, *VLM)
    with pytest.raises(DataError, match=r"train-000001\.tar key 'bad'.*placeholders \[<image>\] do not match media"):
        mmtune.finetune(cfg)


def test_skip_policy_counts_bad_samples(tmp_path):
    shards = _mismatch_shards(tmp_path / "d")
    cfg = tiny_config(tmp_path / "run", shards, *VLM, "data.on_error=skip", "train.log_every=1", "train.steps=3")
    summary = mmtune.finetune(cfg)
    assert summary["counts"]["skipped_bad_sample"] >= 1
    assert _metrics(tmp_path / "run")[-1]["skipped_bad_sample"] >= 1


def test_corrupt_image_is_named_or_counted(tmp_path):
    rng = random.Random(0)
    with ShardSink(tmp_path / "d", "train") as sink:
        for i in range(4):
            s = image_sample(i, rng)
            if i == 2:
                s.data["0.png"] = b"\x89PNG not really"
            sink.write(s)
    shards = sorted(str(p) for p in (tmp_path / "d").glob("train-*.tar"))
    with pytest.raises(DataError, match=r"d/train-000000\.tar key '\d+' sample 's00002'.*member '0.png'.*cannot "
                                        r"decode image"):
        mmtune.finetune(tiny_config(tmp_path / "a", shards, *VLM))
    summary = mmtune.finetune(tiny_config(tmp_path / "b", shards, *VLM, "data.on_error=skip", "train.steps=2"))
    assert summary["counts"]["skipped_bad_sample"] >= 1


def test_overlong_policies(tmp_path):
    rng = random.Random(0)
    long = Sample("long-one", [Message("user", " ".join(["word"] * 200)), Message("assistant", "short answer")])
    rambling = Sample("rambling", [Message("user", "Talk."), Message("assistant", " ".join(["word"] * 200))])
    with ShardSink(tmp_path / "d", "train") as sink:
        sink.write(long)
        sink.write(rambling)
        for i in range(5):
            sink.write(text_sample(i, rng))
    shards = sorted(str(p) for p in (tmp_path / "d").glob("train-*.tar"))
    with pytest.raises(DataError, match=r"sample 'long-one'.*exceed data\.max_len=96"):
        mmtune.finetune(tiny_config(tmp_path / "a", shards, "data.overlong=error"))
    summary = mmtune.finetune(tiny_config(tmp_path / "b", shards, "train.steps=2", "train.log_every=1"))
    assert summary["counts"] == {"skipped_no_target": 1, "truncated": 1}  # the long prompt left nothing to learn
    assert _metrics(tmp_path / "b")[-1]["truncated"] == 1  # the rambling answer was cut, and counted
    assert "data: skipped no_target 1, truncated 1" in (tmp_path / "b" / "train.log").read_text()
    summary = mmtune.finetune(tiny_config(tmp_path / "c", shards, "train.steps=2", "data.overlong=skip"))
    assert summary["counts"]["skipped_overlong"] >= 1


@pytest.mark.parametrize("packing", [False, True])
def test_epochs_instead_of_steps(tmp_path, packing):
    shards = write_text_shards(tmp_path / "d", 22)
    cfg = tiny_config(tmp_path / "run", shards, "train.epochs=2", "train.grad_accum=2", f"data.packing={packing}")
    summary = mmtune.finetune(cfg)
    seen = [i for r in map(json.loads, (tmp_path / "run" / "samples.jsonl").read_text().splitlines())
            for i in r["ids"]]
    assert len(set(seen)) == 22
    if packing:  # steps come from epoch 0's packed batches; later epochs pack their own order a little differently
        assert 22 < len(seen) < 3 * 22
    else:
        assert summary["step"] == 6  # 22 samples / batch 4 -> 6 batches an epoch, x 2 epochs / accumulation 2
        assert sorted(seen) == sorted(seen[:22] * 2)  # two whole passes
    assert "train.epochs=2" in (tmp_path / "run" / "train.log").read_text()


@pytest.mark.parametrize("fusion", [[], XATTN], ids=["splice", "cross_attention"])
def test_multimodal_packed_run_and_checkpoint_reload(tmp_path, fusion):
    shards = write_image_shards(tmp_path / "d", 24)
    cfg = tiny_config(tmp_path / "run", shards, *VLM, *fusion, "data.packing=true", "train.steps=3")
    trained = {}

    def keep_model(event, model, **_):
        trained[event] = model

    summary = mmtune.finetune(cfg, callbacks=[keep_model])
    model, tok, loaded_cfg = load_checkpoint(summary["checkpoint"])
    assert loaded_cfg.data.packing
    batches, _ = make_batches(loaded_cfg, shards, sample_encoder(loaded_cfg, model, tok), tok.pad_token_id,
                              DataState(), train=False)
    batch, _ = next(batches)
    assert "image" in batch["media"]  # the batch goes through the encoder and the bridge
    with torch.no_grad():  # every trained part (LLM, encoder, bridge, fusion) came back: same logits as in memory
        torch.testing.assert_close(model(batch).logits, trained["end"].eval()(batch).logits)
    out = generate(model, tok, loaded_cfg, [[Message("user", "<image>\nwhat is it?")]],
                   [[Image.new("RGB", (40, 30), "red")]], max_new_tokens=4)
    assert len(out) == 1 and isinstance(out[0], str)


def test_text_only_batches_with_a_frozen_llm_step_without_gradients(tmp_path):
    """LLaVA stage 1 on mixed data: a batch without images touches no trainable weight (frozen LLM and encoder);
    it is a step with no gradient, not a crash."""
    shards = write_text_shards(tmp_path / "d", 8)
    cfg = tiny_config(tmp_path / "run", shards, *VLM, "tuning.llm=frozen", "tuning.encoder=frozen",
                      "train.steps=2", "train.log_every=1")
    summary = mmtune.finetune(cfg)
    assert summary["step"] == 2
    losses = [r["loss"] for r in _metrics(tmp_path / "run") if "loss" in r]
    assert len(losses) == 2 and all(torch.isfinite(torch.tensor(losses)))
