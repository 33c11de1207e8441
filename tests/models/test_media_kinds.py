"""Image, video and point-cloud samples in one batch: each kind read by its encoder's preprocess, spliced at its own
sentinels, trained end to end; distributed engines' zero pass touches every kind."""
import torch
import torch.nn.functional as F

from mmtune.config import load_config
from mmtune.data.packing import collate
from mmtune.data.pipeline import SampleEncoder
from mmtune.data.sample import Media, Message, Sample
from mmtune.data.templates import MEDIA_TOKEN_IDS
from mmtune.models.build import build_model
from tests.helpers import EXAMPLE_IMAGE, SAMPLES

MEDIA = ["model.media.image={encoder: {name: clip, args: {arch: mmtune-vit-tiny}}, bridge: {name: mlp2x_gelu}}",
         "model.media.video={encoder: {name: frames, args: {frames: 2}}, bridge: {name: mlp2x_gelu}}",
         "model.media.points={encoder: {name: pointnet, args: {points: 64, tokens: 4, neighbours: 8, width: 32}}, "
         "bridge: {name: linear}}", "tuning.encoder=full"]
FILES = {"image": EXAMPLE_IMAGE, "video": SAMPLES / "video" / "flipping_a_pancake.mkv",
         "points": SAMPLES / "pointcloud" / "bunny.pcd"}


def _sample(i: int, kinds: list[str]) -> Sample:
    media = [Media(kind, f"{j}.bin") for j, kind in enumerate(kinds)]
    text = "".join(f"<{kind}>" for kind in kinds) + " what is shown?"
    return Sample(str(i), [Message("user", text), Message("assistant", "something")], media=media,
                  data={m.member: FILES[m.kind].read_bytes() for m in media})


def _model_and_batch():
    model, tok = build_model(load_config(None, ["model.llm=tiny:llama", *MEDIA]))
    encode = SampleEncoder(tok, "chatml", 512, media_tokens=model.media_tokens,
                           media_loaders={kind: part.encoder.preprocess for kind, part in model.media.items()})
    samples = [_sample(0, ["image", "video"]), _sample(1, ["points"]), _sample(2, ["video", "points", "image"])]
    return model, collate([[encode(s)] for s in samples], tok.pad_token_id)


def test_each_kind_lands_at_its_own_sentinels_and_trains():
    model, batch = _model_and_batch()
    assert {k: len(v) for k, v in batch["media"].items()} == {"image": 2, "video": 2, "points": 2}
    for kind, part in model.media.items():
        assert int((batch["input_ids"] == MEDIA_TOKEN_IDS[kind]).sum()) == 2 * part.num_tokens
    assert model.media["video"].encoder.tower is model.media["image"].encoder  # shared, saved once
    scored = model(batch)
    F.cross_entropy(scored.logits, scored.targets).backward()
    for kind, part in model.media.items():
        assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in part.bridge.parameters()), kind
    assert all(p.grad is not None for p in model.media["points"].encoder.parameters())


def test_zero_pass_touches_every_kind_on_a_text_only_batch():
    model, batch = _model_and_batch()
    text_only = {**batch, "input_ids": batch["input_ids"].clamp(min=0), "media": {}}
    model.media_pass_always = True
    scored = model(text_only)
    F.cross_entropy(scored.logits, scored.targets).backward()
    for kind, part in model.media.items():
        assert all(p.grad is not None and not p.grad.any() for p in part.parameters()), kind
