"""Splicing media into any causal LM: features land exactly at the placeholders, in order, for any number of
images per sample and per batch; media positions never carry loss; without media it is the plain HF model."""
import pytest
import torch
import torch.nn.functional as F

from mmtune.config import load_config
from mmtune.data.packing import collate
from mmtune.data.sample import Message
from mmtune.data.templates import MEDIA_TOKEN_IDS, encode
from mmtune.errors import DataError
from mmtune.models.build import build_model
from tests.helpers import VLM

CONVERSATIONS = [  # 0, 1, 2 and 3 images, placeholders at the start, middle and end of turns, over several turns
    [Message("user", "no image here"), Message("assistant", "fine")],
    [Message("user", "<image>\nwhat is this?"), Message("assistant", "a square")],
    [Message("user", "compare <image> and"), Message("assistant", "which?"), Message("user", "this <image>"),
     Message("assistant", "they differ")],
    [Message("user", "<image><image>"), Message("assistant", "two"), Message("user", "and <image>?"),
     Message("assistant", "three")],
]


def _model(llm: str, *extra):
    cfg = load_config(None, [f"model.llm={llm}", *VLM, *extra])
    return build_model(cfg)


def _batch(model, tok, packed: bool):
    torch.manual_seed(1)
    samples = []
    for i, msgs in enumerate(CONVERSATIONS):
        enc = encode(msgs, tok, "chatml", media_tokens=model.media_tokens)
        n = sum(m.content.count("<image>") for m in msgs)
        samples.append({"id": str(i), "input_ids": enc.input_ids, "labels": enc.labels,
                        "media": {"image": torch.randn(n, 3, 32, 32)} if n else {}, "modality": "image"})
    rows = [samples] if packed else [[s] for s in samples]
    return collate(rows, tok.pad_token_id)


@pytest.mark.parametrize("llm", ["tiny:llama", "tiny:qwen2", "smollm2-135m"])
def test_features_land_at_placeholders_in_order(llm):
    model, tok = _model(llm)
    model.eval()
    batch = _batch(model, tok, packed=False)
    with torch.no_grad():
        embeds = model.embed(batch["input_ids"], batch["media"])
        feats = model.media["image"](batch["media"]["image"])
    slots = batch["input_ids"] == MEDIA_TOKEN_IDS["image"]
    assert feats.shape[0] == 6
    torch.testing.assert_close(embeds[slots], feats.reshape(-1, feats.shape[-1]))
    text = ~slots & (batch["seq_ids"] >= 0)
    plain = model.llm.get_input_embeddings()(batch["input_ids"].clamp(min=0))
    torch.testing.assert_close(embeds[text], plain[text])


def test_media_positions_never_carry_loss():
    model, tok = _model("tiny:llama")
    batch = _batch(model, tok, packed=True)
    assert not (batch["labels"][batch["input_ids"] < 0] != -100).any()
    scored = model(batch)
    targets = torch.full_like(batch["labels"], -100)
    targets[:, :-1] = batch["labels"][:, 1:]
    assert scored.targets.numel() == int((targets != -100).sum())
    assert (scored.targets >= 0).all()


@pytest.mark.parametrize("llm", ["tiny:llama", "tiny:qwen2"])
def test_without_media_equals_the_plain_hf_model(llm):
    model, tok = _model(llm)
    model.eval()
    enc = encode(CONVERSATIONS[0], tok, "chatml")
    batch = collate([[{"id": "0", "input_ids": enc.input_ids, "labels": enc.labels, "media": {}}]],
                    tok.pad_token_id)
    with torch.no_grad():
        scored = model(batch)
        ours = F.cross_entropy(scored.logits, scored.targets)
        theirs = model.llm(input_ids=batch["input_ids"], labels=batch["labels"]).loss
        full = model(batch, sparse=False)
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(full.logits, scored.logits, atol=1e-5, rtol=1e-5)


def test_gradients_reach_the_bridge_and_encoder():
    model, tok = _model("tiny:llama")
    batch = _batch(model, tok, packed=False)
    scored = model(batch)
    F.cross_entropy(scored.logits, scored.targets).backward()
    assert model.media["image"].bridge.linear_1.weight.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.media["image"].encoder.parameters() if p.requires_grad)


def test_image_count_mismatch_is_an_error():
    model, tok = _model("tiny:llama")
    batch = _batch(model, tok, packed=False)
    with pytest.raises(DataError, match=r"96 image positions but 5 image items x 16 tokens"):
        model.embed(batch["input_ids"], {"image": batch["media"]["image"][:5]})
    with pytest.raises(DataError, match="no image media"):
        model.embed(batch["input_ids"], None)
