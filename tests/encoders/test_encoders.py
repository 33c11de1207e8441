"""The encoder contract, for every entry of ENCODERS: shapes, transforms, freezing, and config errors."""
from __future__ import annotations

import copy
import pickle

import pytest
import torch

from mmtune.bridges import build_bridge
from mmtune.config import ComponentConfig
from mmtune.data.media import decode_image
from mmtune.encoders import ENCODERS, build_encoder
from mmtune.errors import ConfigError
from tests.helpers import EXAMPLE_IMAGE



def cases(tiny_cases, name):
    return [ComponentConfig(name, args) for args in tiny_cases[name]]


def test_every_registered_encoder_has_a_tiny_case(tiny_cases):
    assert set(tiny_cases) == set(ENCODERS["image"])


@pytest.mark.parametrize("name", sorted(ENCODERS["image"]))
@pytest.mark.parametrize("tokens", ["patch", "all"])
def test_forward_returns_num_tokens_by_out_dim(tiny_cases, name, tokens):
    for cfg in cases(tiny_cases, name):
        encoder = build_encoder(ComponentConfig(name, {**cfg.args, "tokens": tokens}))
        pixels = torch.randn(2, 3, encoder.image_size, encoder.image_size)
        assert encoder(pixels).shape == (2, encoder.num_tokens, encoder.out_dim)


@pytest.mark.parametrize("name", sorted(ENCODERS["image"]))
def test_transform_of_a_real_image_feeds_the_encoder(tiny_cases, name):
    image = decode_image(EXAMPLE_IMAGE.read_bytes(), str(EXAMPLE_IMAGE))
    for cfg in cases(tiny_cases, name):
        encoder = build_encoder(cfg)
        pixels = encoder.transform(image)
        assert pixels.shape == (3, encoder.image_size, encoder.image_size) and pixels.dtype == torch.float32
        assert torch.equal(pickle.loads(pickle.dumps(encoder.transform))(image), pixels)  # DataLoader workers
        assert encoder(pixels[None]).shape == (1, encoder.num_tokens, encoder.out_dim)
        loaded = pickle.loads(pickle.dumps(encoder.preprocess))(EXAMPLE_IMAGE.read_bytes(), "example.jpg")
        assert loaded.shape == encoder.item_shape and torch.equal(torch.as_tensor(loaded), pixels)


@pytest.mark.parametrize("name", sorted(ENCODERS["image"]))
def test_frozen_encoder_gets_no_gradients(tiny_cases, name):
    for cfg in cases(tiny_cases, name):
        encoder = build_encoder(cfg).requires_grad_(False)
        bridge = build_bridge(ComponentConfig("mlp2x_gelu"), encoder.out_dim, 8)
        bridge(encoder(torch.randn(2, 3, encoder.image_size, encoder.image_size))).sum().backward()
        assert all(p.grad is None for p in encoder.parameters())
        assert all(p.grad is not None for p in bridge.parameters())


@pytest.mark.parametrize("name", sorted(ENCODERS["image"]))
def test_trained_encoder_has_no_unused_parameters(tiny_cases, name):
    """Blocks after `layer` and the pooling head are dropped, so DDP needs no find_unused_parameters."""
    for cfg in cases(tiny_cases, name):
        encoder = build_encoder(ComponentConfig(name, {**cfg.args, "layer": -2}))
        encoder(torch.randn(2, 3, encoder.image_size, encoder.image_size)).sum().backward()
        unused = [n for n, p in encoder.named_parameters() if p.grad is None]
        assert unused == []


@pytest.mark.parametrize("name", sorted(ENCODERS["image"]))
def test_checkpointed_activations_give_the_same_gradients(tiny_cases, name):
    """train.activation_checkpointing: blocks are recomputed in the backward pass, so fewer tensors are kept."""
    def step(encoder, pixels):
        saved = []
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            out = encoder(pixels)
        out.square().sum().backward()
        return out.detach(), {n: p.grad for n, p in encoder.named_parameters()}, len(saved)

    for cfg in cases(tiny_cases, name):
        plain = build_encoder(cfg).train()
        checkpointed = copy.deepcopy(plain)
        checkpointed.checkpoint_activations()
        pixels = torch.randn(2, 3, plain.image_size, plain.image_size)
        out, grads, saved = step(plain, pixels)
        out_ckpt, grads_ckpt, saved_ckpt = step(checkpointed, pixels)
        assert saved_ckpt < saved / 2
        torch.testing.assert_close(out_ckpt, out)
        for n, g in grads.items():
            torch.testing.assert_close(grads_ckpt[n], g, atol=1e-5, rtol=1e-5, msg=n)


@pytest.mark.parametrize("name", sorted(ENCODERS["image"]))
def test_penultimate_layer_differs_from_last(tiny_cases, name):
    for cfg in cases(tiny_cases, name):
        torch.manual_seed(0)
        last = build_encoder(ComponentConfig(name, {**cfg.args, "layer": -1}))
        torch.manual_seed(0)
        penultimate = build_encoder(ComponentConfig(name, {**cfg.args, "layer": -2}))
        pixels = torch.randn(2, 3, last.image_size, last.image_size)
        assert last(pixels).shape == penultimate(pixels).shape
        assert not torch.allclose(last(pixels), penultimate(pixels))


def test_cls_tokens_give_one_token(tiny_cases):
    encoder = build_encoder(ComponentConfig("clip", {**tiny_cases["clip"][0], "tokens": "cls"}))
    assert encoder.num_tokens == 1
    assert encoder(torch.randn(3, 3, encoder.image_size, encoder.image_size)).shape == (3, 1, encoder.out_dim)


def test_unknown_encoder_lists_the_registry():
    with pytest.raises(ConfigError, match=r"model\.media\.image\.encoder\.name: unknown name 'clipp'; did you mean clip\? "
                                          r"\(known: clip, hf_clip\)"):
        build_encoder(ComponentConfig("clipp", {}))


@pytest.mark.parametrize("args, message", [
    ({"arch": "mmtune-vit-tiny", "lyer": -2}, r"model\.media\.image\.encoder\.args\.lyer; did you mean model\.media\.image\.encoder\.args\.layer"),
    ({"arch": "mmtune-vit-tiny", "tokens": "first"}, r"model\.media\.image\.encoder\.args\.tokens must be one of"),
    ({"arch": "mmtune-vit-tiny", "layer": "last"}, r"model\.media\.image\.encoder\.args\.layer must be int"),
    ({"arch": "mmtune-vit-tiny", "layer": 2}, r"model\.media\.image\.encoder\.args\.layer: 2 is out of range .* \(use -2\.\.1\)"),
    ({}, r"model\.media\.image\.encoder\.args\.arch must be set"),
])
def test_bad_args_name_the_key(args, message):
    with pytest.raises(ConfigError, match=message):
        build_encoder(ComponentConfig("clip", args))
