"""bench/flops.py: the decoder layers' maps add up to the counted linear weights, and the layer pass runs them."""
import math

import pytest

from bench.flops import LAYER_INPUTS, FlopModel, layer_pass_gflops
from mmtune.models.llm import load_llm


@pytest.mark.parametrize("name", ["tiny:llama", "tiny:qwen2"])
def test_layer_maps_are_the_counted_weights(name):
    model = FlopModel.of_llm(load_llm(name)[0].config)
    maps = model.layer_maps()
    assert model.layers * sum(i * o for i, o in maps) == model.linear
    assert len(LAYER_INPUTS) == len(maps)
    for shared in {i for i in LAYER_INPUTS}:  # maps that read one input agree on its width
        assert len({maps[m][0] for m, i in enumerate(LAYER_INPUTS) if i == shared}) == 1


def test_layer_pass_gives_a_rate():
    model = FlopModel(linear=0, layers=2, attention_width=32, kv_width=16, hidden=32, intermediate=64, vocabulary=10)
    model.linear = model.layers * sum(i * o for i, o in model.layer_maps())
    rate = layer_pass_gflops(model, tokens=64, threads=1, repeats=1)
    assert math.isfinite(rate) and rate > 0
