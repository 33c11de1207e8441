"""The perceiver resampler: a fixed number of tokens whatever the encoder gives; per-frame time embeddings make a
video's frame order matter, where attention alone (an image's tokens) is blind to token order."""
import pytest
import torch

from mmtune.bridges import build_bridge
from mmtune.config import ComponentConfig
from mmtune.errors import ConfigError

SMALL = {"latents": 6, "depth": 2, "heads": 2, "dim_head": 8}


def _resampler(frames: int):
    torch.manual_seed(0)
    return build_bridge(ComponentConfig("resampler", SMALL), in_dim=16, out_dim=24, frames=frames).eval()


def test_tokens_per_item_are_the_latents_whatever_the_encoder_gives():
    bridge = _resampler(frames=1)
    for n_in in (3, 40):
        assert bridge(torch.randn(2, n_in, 16)).shape == (2, bridge.num_tokens(n_in), 24) == (2, 6, 24)


def test_video_frames_get_time_embeddings_so_their_order_matters():
    frames, per_frame = 4, 3
    video = torch.randn(2, frames * per_frame, 16)
    reversed_frames = video.unflatten(1, (frames, per_frame)).flip(1).flatten(1, 2)
    image = _resampler(frames=1)
    assert not hasattr(image, "time_embeddings")
    torch.testing.assert_close(image(video), image(reversed_frames))  # a set of tokens: order is invisible
    timed = _resampler(frames=frames)
    assert timed.time_embeddings.shape == (frames, 16)
    assert not torch.allclose(timed(video), timed(reversed_frames), atol=1e-4)
    timed.train()
    timed(video).square().mean().backward()
    assert timed.time_embeddings.grad.abs().sum() > 0


def test_frames_must_split_the_tokens_and_args_are_checked():
    with pytest.raises(ValueError, match="7 tokens do not split into 4 frames"):
        _resampler(frames=4)(torch.randn(1, 7, 16))
    with pytest.raises(ConfigError, match=r"bridge 'resampler': args.latents must be >= 1, got 0"):
        build_bridge(ComponentConfig("resampler", {"latents": 0}), 16, 24)
    with pytest.raises(ConfigError, match=r"unknown key model\.media\.image\.bridge\.args\.layers"):
        build_bridge(ComponentConfig("resampler", {"layers": 2}), 16, 24)
