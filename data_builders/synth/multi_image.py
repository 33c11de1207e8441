"""Synthetic multi-image questions for the multi-image demo: three images of one large shape each (drawn with
synth/shapes.py), two of one colour and one of another. The questions ask for the colour two images share, or the colour of
the odd one out: both colours are in the prompt, so only comparing the images tells them apart (a model that sees
the colours but does not count the images they are in is right half the time).
Sample i derives from `random.Random(f"multi-image-{seed}-{i}")` alone.
"""
from __future__ import annotations

import itertools
import random
from pathlib import Path
from typing import Iterator

from data_builders.synth.shapes import COLORS, SHAPES, Scene, qa_sample, render, write_splits
from mmtune.data.sample import Sample
from mmtune.errors import ConfigError

SOURCE = "synth/multi-image"
IMAGES = 3
ANSWERS = {"shared": tuple(COLORS), "odd": tuple(COLORS)}
QUESTIONS = {"shared": ("Which color do two of the images share?", "What color is shown in two images?"),
             "odd": ("What color is the odd image?", "Which color appears in only one image?")}
MULTI_TURN = "multi"


def generate(n: int, seed: int, image_size: int = 48, multi_turn: bool = False) -> Iterator[Sample]:
    """`n` samples, deterministic from `seed`. Default: one question, shared or odd colour (`task` names it);
    `multi_turn`: both, in a random order (task "multi")."""
    if n < 0:
        raise ConfigError(f"synth multi-image: n must be >= 0, got {n}")
    return itertools.islice(_stream(seed, image_size, multi_turn), n)


def _stream(seed: int, image_size: int, multi_turn: bool) -> Iterator[Sample]:
    for i in itertools.count():
        rng = random.Random(f"multi-image-{seed}-{i}")
        shared, odd = rng.sample(tuple(COLORS), 2)
        colors = [shared] * (IMAGES - 1) + [odd]
        rng.shuffle(colors)
        images = [render(large_shape(rng, color, image_size), image_size) for color in colors]
        answers = {"shared": shared, "odd": odd}
        tasks = rng.sample(tuple(answers), 2) if multi_turn else [rng.choice(tuple(answers))]
        turns = [(rng.choice(QUESTIONS[task]), answers[task]) for task in tasks]
        yield qa_sample(f"multi-image-{seed}-{i:07d}", SOURCE, MULTI_TURN if multi_turn else tasks[0], turns,
                        [("image", f"{k}.png", png) for k, png in enumerate(images)])


def large_shape(rng: random.Random, color: str, image_size: int) -> Scene:
    """One shape filling 45-75% of the image side, anywhere: large enough to cover several patches of a small
    vision tower, and one a picture, so an image's share of colour does not depend on a count of copies."""
    side = rng.randint(round(0.45 * image_size), round(0.75 * image_size))
    x, y = rng.randint(0, image_size - side), rng.randint(0, image_size - side)
    return Scene(rng.choice(SHAPES), color, ((x, y, x + side - 1, y + side - 1),), None)


def write_demo_shards(out_dir: str | Path, n_train: int, n_eval: int, seed: int = 0, image_size: int = 48,
                      multi_turn: bool = True, shard_size: int = 1000) -> dict:
    """`train-*.tar` (multi-turn by default) and single-question `eval-*.tar` in `out_dir`, from streams seeded
    2*seed and 2*seed+1. Returns {"train": [paths], "eval": [paths], "chance": eval chance accuracy}."""
    splits = {"train": list(generate(n_train, 2 * seed, image_size, multi_turn))}
    return write_splits(out_dir, splits, _stream(2 * seed + 1, image_size, False), n_eval, ANSWERS, shard_size)
