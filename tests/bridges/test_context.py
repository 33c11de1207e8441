"""The per-item context seam: a bridge that reads its item's instruction gets, for each item, the text of the turn
its placeholder sits in, encoded in the workers in training and the same way at generation."""
from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
import pytest
import torch
from torch import nn

from mmtune.bridges import BRIDGES
from mmtune.data.packing import collate
from mmtune.data.sample import Media, Message, Sample, media_instructions
from mmtune.infer.generate import generate
from mmtune.models.build import build_model
from mmtune.models.kinds import sample_encoder
from tests.helpers import VLM, image_sample, tiny_config

WIDTH = 8


def encode_bytes(text: str) -> dict[str, np.ndarray]:
    """The first WIDTH bytes of the text, zero-padded (module level: it must pickle into workers)."""
    raw = np.frombuffer(text.encode()[:WIDTH], dtype=np.uint8).astype(np.int64)
    ids = np.zeros(WIDTH, dtype=np.int64)
    ids[:len(raw)] = raw
    return {"ids": ids, "mask": (ids > 0).astype(np.int64)}


class InstructionShift(nn.Module):
    """A test bridge: linear features plus an embedding of the instruction's bytes, so the text changes the output."""

    @dataclass
    class Args:
        scale: float = 1.0

    context = "instruction"

    def __init__(self, in_dim, out_dim, args):
        super().__init__()
        self.proj, self.text = nn.Linear(in_dim, out_dim), nn.Embedding(256, out_dim)
        self.scale = args.scale
        self.seen: list[torch.Tensor] = []

    def num_tokens(self, n_in):
        return n_in

    def context_encoder(self):
        return encode_bytes

    def forward(self, features, context=None):
        self.seen.append(None if context is None else context["ids"])
        shift = 0 if context is None else self.text(context["ids"]).mean(1, keepdim=True)
        return self.proj(features) + self.scale * shift


@pytest.fixture
def context_bridge(monkeypatch):
    monkeypatch.setitem(BRIDGES, "instruction_shift", InstructionShift)


def _model(tmp_path, *extra):
    cfg = tiny_config(tmp_path, [], *VLM, "model.bridge={name: instruction_shift, args: {scale: 2.0}}", *extra)
    model, tok = build_model(cfg)
    return cfg, model, tok


def test_instructions_are_the_turn_text_per_placeholder():
    messages = [Message("user", "<image>\nWhat colour?"), Message("assistant", "red"),
                Message("user", "Compare <image> with <video>  now"), Message("assistant", "same")]
    assert media_instructions(messages) == [("image", "What colour?"), ("image", "Compare with now"),
                                            ("video", "Compare with now")]


def test_typed_args_are_checked(context_bridge, tmp_path):
    from mmtune.errors import ConfigError
    with pytest.raises(ConfigError, match=r"model\.media\.image\.bridge\.args\.scal\b.*scale"):
        _model(tmp_path, "model.bridge={name: instruction_shift, args: {scal: 2.0}}")


def test_each_item_gets_its_own_instruction_in_training_and_generation(context_bridge, tmp_path):
    cfg, model, tok = _model(tmp_path)
    sample = image_sample(0, random.Random(0), n_images=1)
    two_turns = Sample("t", [Message("user", "<image>\nWhat colour?"), Message("assistant", "red"),
                             Message("user", "<image>\nHow many?"), Message("assistant", "two")],
                       media=[Media("image", "a.png"), Media("image", "b.png")],
                       data={"a.png": sample.data["0.png"], "b.png": sample.data["0.png"]})
    encode = sample_encoder(cfg, model, tok)
    batch = collate([[encode(two_turns)], [encode(sample)]], tok.pad_token_id)
    ids = batch["media_context"]["image"]["ids"]
    assert ids.shape == (3, WIDTH)
    expected = [encode_bytes(t)["ids"] for t in ("What colour?", "How many?", media_instructions(sample.messages)[0][1])]
    assert np.array_equal(ids.numpy(), np.stack(expected))
    bridge = model.media["image"].bridge
    scored = model(batch)
    assert torch.equal(bridge.seen[-1], ids)
    other = collate([[encode(Sample("t", [Message("user", "<image>\nWhich shape?"), *two_turns.messages[1:]],
                                    media=two_turns.media, data=two_turns.data))], [encode(sample)]], tok.pad_token_id)
    assert not torch.allclose(model(other).logits, scored.logits)  # the instruction reaches the features

    from PIL import Image
    generate(model, tok, cfg, [two_turns.messages[:1]], [[Image.new("RGB", (32, 32))]], max_new_tokens=1)
    assert torch.equal(bridge.seen[-1], torch.as_tensor(encode_bytes("What colour?")["ids"])[None])


def test_zero_pass_runs_without_context(context_bridge, tmp_path):
    cfg, model, tok = _model(tmp_path)
    model.media_pass_always = True
    encode = sample_encoder(cfg, model, tok)
    text = image_sample(0, random.Random(0), n_images=0)
    batch = collate([[encode(text)]], tok.pad_token_id)
    assert batch["media_context"] == {}
    model(batch)
    assert model.media["image"].bridge.seen[-1] is None
