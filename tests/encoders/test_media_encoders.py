"""Video (frames) and point-cloud encoders: shapes, token budgets, gradient flow, the shared image tower, and the
point tokenizer's invariance to the order of the points."""
import math
import pickle

import pytest
import torch

from mmtune.config import ComponentConfig
from mmtune.encoders import build_encoder
from mmtune.errors import ConfigError
from tests.helpers import SAMPLES

TOWER = {"name": "clip", "args": {"arch": "mmtune-vit-tiny"}}  # 32 px, 4 x 4 patch grid, width 64


def frames(image=None, **args):
    return build_encoder(ComponentConfig("frames", args), "video", image_encoder=image)


@pytest.fixture(scope="module")
def image():
    return build_encoder(ComponentConfig(**TOWER))


@pytest.mark.parametrize("args, tokens", [
    ({"frames": 3}, 3 * 4), ({"frames": 3, "pool": 1}, 3 * 16), ({"frames": 3, "time": "mean"}, 4),
    ({"frames": 8, "max_tokens": 20}, 5 * 4), ({"frames": 3, "pool": 3}, 3 * 4)])
def test_frames_tokens_are_fixed_by_the_config(image, args, tokens):
    encoder = frames(image, **args)
    videos = torch.randn(2, *encoder.item_shape)
    assert encoder.num_tokens == tokens and encoder(videos).shape == (2, tokens, image.out_dim)


def test_frames_share_the_image_tower_without_owning_it(image):
    encoder = frames(image, frames=2)
    assert encoder.tower is image and list(encoder.parameters()) == []
    own = frames(None, frames=2, tower=TOWER)
    assert len(list(own.parameters())) > 0 and own.from_scratch


def test_gradients_reach_the_shared_tower(image):
    encoder = frames(image, frames=2)
    encoder(torch.randn(1, *encoder.item_shape)).sum().backward()
    assert all(p.grad is not None for p in image.parameters())
    image.zero_grad()


def test_frames_preprocess_a_real_video_in_a_worker(image):
    encoder = frames(image, frames=4)
    loaded = pickle.loads(pickle.dumps(encoder.preprocess))((SAMPLES / "video" / "flipping_a_pancake.mkv").read_bytes(),
                                                            "pancake")
    assert loaded.shape == encoder.item_shape
    assert encoder(torch.as_tensor(loaded)[None]).shape == (1, encoder.num_tokens, encoder.out_dim)


@pytest.mark.parametrize("args, message", [
    ({"frames": 0}, r"model\.media\.video\.encoder\.args\.frames must be >= 1"),
    ({"max_tokens": 3}, r"max_tokens: 3 is below one frame's 4 tokens"),
    ({"time_encoding": -1.0}, r"time_encoding must be >= 0"),
    ({"time_encoding": 1.0, "time": "mean"}, r"time_encoding: the mean over time is the same for every video"),
])
def test_bad_frames_args_name_the_key(image, args, message):
    with pytest.raises(ConfigError, match=message):
        frames(image, **args)


def test_time_encoding_tells_identical_frames_apart(image):
    """A still video: without the encoding its frames' tokens are equal, with it they differ by exactly the
    scaled sinusoid of the frame index (and the first frame's sines are zero, its cosines one)."""
    still = torch.randn(1, 1, *frames(image, frames=3).item_shape[1:]).expand(1, 3, -1, -1, -1)
    plain = frames(image, frames=3)(still).unflatten(1, (3, 4))
    encoded = frames(image, frames=3, time_encoding=0.5)(still).unflatten(1, (3, 4))
    assert torch.allclose(plain[:, 0], plain[:, 2])
    added = encoded - plain
    assert torch.allclose(added[0, :, 0], added[0, :, 3], atol=1e-6)  # the same for every token of a frame
    assert torch.allclose(added[0, 0, 0, 0::2], torch.zeros(32), atol=1e-6)
    assert torch.allclose(added[0, 0, 0, 1::2], torch.full((32,), 0.5), atol=1e-6)
    assert torch.allclose(added[0, 1, 0, 0], torch.tensor(0.5 * math.sin(1.0)), atol=1e-6)
    assert not torch.allclose(encoded[:, 0], encoded[:, 2])


def test_frames_without_an_image_encoder_say_what_to_set():
    with pytest.raises(ConfigError, match=r"no image encoder to share; set model\.media\.image"):
        frames(None)


def points(**args):
    return build_encoder(ComponentConfig("pointnet", {"points": 128, "tokens": 8, "neighbours": 8, "width": 32,
                                                      **args}), "points")


@pytest.mark.parametrize("layers", [0, 1])
def test_point_tokens_shape_and_gradients(layers):
    encoder = points(layers=layers)
    out = encoder(torch.randn(3, *encoder.item_shape))
    assert out.shape == (3, 8, 32)
    out.sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in encoder.parameters())


def test_point_tokens_do_not_depend_on_the_order_of_the_points():
    torch.manual_seed(0)
    encoder = points(layers=1).eval()
    cloud = torch.randn(1, 128, 6)
    shuffled = cloud[:, torch.randperm(128)]
    torch.testing.assert_close(encoder(cloud), encoder(shuffled), rtol=1e-5, atol=1e-5)


def test_points_preprocess_a_real_file():
    encoder = points()
    loaded = encoder.preprocess((SAMPLES / "pointcloud" / "bunny.pcd").read_bytes(), "bunny.pcd")
    assert loaded.shape == encoder.item_shape == (128, 6)


def test_point_encoder_is_not_an_image_encoder():
    with pytest.raises(ConfigError, match=r"model\.media\.image\.encoder\.name: unknown name 'pointnet'"):
        build_encoder(ComponentConfig("pointnet", {}), "image")
