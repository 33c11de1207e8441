"""generate: the KV cache and batching change no greedy token (text and images), sampling is reproducible with a
seed and leaves the global RNG alone, stop strings and repetition penalty act."""
import random

import pytest
import torch
from PIL import Image

from mmtune.config import load_config
from mmtune.data.sample import Message
from mmtune.infer.generate import generate
from mmtune.models.build import build_model
from tests.helpers import VLM

PROMPTS = ["alpha beta", "gamma delta epsilon zeta eta theta iota", "<image>\nkappa", "<image>\nlambda mu nu xi"]


@pytest.fixture(scope="module")
def vlm():
    """A tiny VLM whose weights are spread out (randn * 0.1) so its greedy answers are varied words, not one
    special token."""
    cfg = load_config(None, ["model.llm=tiny:llama", *VLM])
    model, tokenizer = build_model(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval(), tokenizer, cfg


def _inputs():
    rng = random.Random(0)
    image = lambda: Image.new("RGB", (40, 24), tuple(rng.randrange(256) for _ in range(3)))  # noqa: E731
    return [[Message("user", p)] for p in PROMPTS], [[image()] if "<image>" in p else [] for p in PROMPTS]


def test_greedy_is_the_same_with_and_without_cache_and_batched_or_alone(vlm):
    model, tokenizer, cfg = vlm
    conversations, images = _inputs()
    batched = generate(model, tokenizer, cfg, conversations, images, max_new_tokens=10)
    assert generate(model, tokenizer, cfg, conversations, images, max_new_tokens=10, use_cache=False) == batched
    alone = [generate(model, tokenizer, cfg, [c], [i], max_new_tokens=10)[0] for c, i in zip(conversations, images)]
    assert alone == batched
    assert len(set(batched)) > 1 and all(batched)


def test_sampling_is_reproducible_with_a_seed(vlm):
    model, tokenizer, cfg = vlm
    conversations, images = _inputs()
    settings = dict(max_new_tokens=10, temperature=1.5, top_p=0.95, top_k=50)
    state = torch.random.get_rng_state()
    first = generate(model, tokenizer, cfg, conversations, images, seed=1, **settings)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global RNG is not drawn from
    assert generate(model, tokenizer, cfg, conversations, images, seed=1, **settings) == first
    others = [generate(model, tokenizer, cfg, conversations, images, seed=s, **settings) for s in (2, 3)]
    assert any(o != first for o in others)


def test_stop_strings_cut_the_answer_and_repetition_penalty_changes_it(vlm):
    model, tokenizer, cfg = vlm
    conversations, images = _inputs()
    full = generate(model, tokenizer, cfg, conversations[:1], max_new_tokens=12)[0]
    words = full.split()
    assert len(words) > 2
    cut = generate(model, tokenizer, cfg, conversations[:1], max_new_tokens=12, stop=(words[1],))[0]
    assert cut == full[:full.find(words[1])].strip()
    with pytest.warns(UserWarning, match="penalty only to newly generated tokens"):
        penalised = generate(model, tokenizer, cfg, conversations, images, max_new_tokens=12,
                             repetition_penalty=5.0)
    assert penalised != generate(model, tokenizer, cfg, conversations, images, max_new_tokens=12)
