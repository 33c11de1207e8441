"""The bridge contract for every entry of BRIDGES, and mlp2x_gelu's identity with LLaVA's projector in transformers."""
from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig
from transformers.models.llava.modeling_llava import LlavaMultiModalProjector

from mmtune.bridges import BRIDGES, build_bridge
from mmtune.config import ComponentConfig
from mmtune.errors import ConfigError


@pytest.mark.parametrize("name", [*BRIDGES, "mlp1x_gelu", "mlp3x_gelu"])
def test_bridge_maps_features_to_llm_width_and_every_parameter_learns(name):
    """Default arguments; a context bridge gets two instructions encoded by its own context encoder."""
    bridge = build_bridge(ComponentConfig(name), in_dim=16, out_dim=24)
    features = torch.randn(2, 5, 16)
    if bridge.context:
        encoded = [bridge.context_encoder()(t) for t in ("What colour is the shape?", "How many?")]
        context = {k: torch.as_tensor(np.stack([e[k] for e in encoded])) for k in encoded[0]}
        out = bridge(features, context)
    else:
        out = bridge(features)
    assert out.shape == (2, bridge.num_tokens(5), 24)
    out.square().mean().backward()
    assert [n for n, p in bridge.named_parameters() if p.grad is None or not p.grad.any()] == []


def test_mlp2x_gelu_loads_into_llava_projector_and_agrees():
    config = LlavaConfig(vision_config=CLIPVisionConfig(hidden_size=16, num_attention_heads=2),
                         text_config=LlamaConfig(hidden_size=24, num_attention_heads=2), projector_hidden_act="gelu")
    llava = LlavaMultiModalProjector(config)
    ours = build_bridge(ComponentConfig("mlp2x_gelu"), in_dim=16, out_dim=24)
    llava.load_state_dict(ours.state_dict())  # strict: same names, same shapes
    features = torch.randn(2, 5, 16)
    torch.testing.assert_close(ours(features), llava(features))


def test_mlp_depth_comes_from_the_name():
    bridge = build_bridge(ComponentConfig("mlp3x_gelu"), in_dim=16, out_dim=24)
    assert [n for n, _ in bridge.named_parameters()] == [
        f"linear_{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")]
    features = torch.randn(2, 5, 16)
    act = torch.nn.functional.gelu
    expected = bridge.linear_3(act(bridge.linear_2(act(bridge.linear_1(features)))))
    torch.testing.assert_close(bridge(features), expected)


@pytest.mark.parametrize("name", ["mlp0x_gelu", "mlp2x_relu", "qformerr"])
def test_unknown_bridge_lists_the_registry(name):
    known = re.escape(", ".join(BRIDGES))
    with pytest.raises(ConfigError, match=rf"model\.media\.image\.bridge\.name: unknown name '{name}'.* \(known: "
                                          rf"{known}, or mlp<N>x_gelu for any N\)"):
        build_bridge(ComponentConfig(name), 16, 24)


def test_projector_arguments_are_refused():
    with pytest.raises(ConfigError, match=r"model\.media\.image\.bridge\.args\.depth: unknown argument; mlp2x_gelu takes none"):
        build_bridge(ComponentConfig("mlp2x_gelu", {"depth": 3}), 16, 24)
