"""Synthetic multi-image questions for the multi-image demo: three shapes images (synth/shapes.py), two of one
colour and one of another; the question is which image has the odd colour (1, 2 or 3), or the colour of the shapes
in one numbered image. The images are labelled in the prompt ("Image 1: <image>", as interleaved
multi-image data writes them): which image is which is told by the text before it, not by counting positions.
Sample i derives from `random.Random(f"multi-image-{seed}-{i}")` alone.
"""
from __future__ import annotations

import itertools
import random
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from data_builders.synth.shapes import COLORS, qa_sample, random_scene, render, write_splits
from mmtune.data.sample import Sample
from mmtune.errors import ConfigError

SOURCE = "synth/multi-image"
NUMBERS = ("1", "2", "3")
ANSWERS = {"odd": NUMBERS, "color": tuple(COLORS)}
QUESTIONS = {"odd": ("Which image has a different color?", "Which image is the odd one out?"),
             "color": ("What color is image {n}?", "Which color does image {n} show?")}
MULTI_TURN = "multi"
LABELLED = "".join(f"Image {n}: <image>\n" for n in NUMBERS)


def generate(n: int, seed: int, image_size: int = 48, multi_turn: bool = False) -> Iterator[Sample]:
    """`n` samples, deterministic from `seed`. Default: one question, its type drawn uniformly (`task` names it);
    `multi_turn`: the odd-colour question and the colour of every image, in a random order (task "multi")."""
    if n < 0:
        raise ConfigError(f"synth multi-image: n must be >= 0, got {n}")
    return itertools.islice(_stream(seed, image_size, multi_turn), n)


def _stream(seed: int, image_size: int, multi_turn: bool) -> Iterator[Sample]:
    for i in itertools.count():
        rng = random.Random(f"multi-image-{seed}-{i}")
        common, odd_color = rng.sample(tuple(COLORS), 2)
        odd = rng.randrange(len(NUMBERS))
        colors = [odd_color if k == odd else common for k in range(len(NUMBERS))]
        images = [render(replace(random_scene(rng, image_size), color=c), image_size) for c in colors]
        asked = [("odd", None)] + [("color", k) for k in range(len(NUMBERS))]
        if multi_turn:
            rng.shuffle(asked)
        else:
            asked = [rng.choice([asked[0], rng.choice(asked[1:])])]  # odd or colour, each half the time
        turns = [(_question(rng, task, k), NUMBERS[odd] if task == "odd" else colors[k]) for task, k in asked]
        yield qa_sample(f"multi-image-{seed}-{i:07d}", SOURCE, MULTI_TURN if multi_turn else asked[0][0], turns,
                        [("image", f"{k}.png", png) for k, png in enumerate(images)], LABELLED)


def _question(rng: random.Random, task: str, image: int | None) -> str:
    return rng.choice(QUESTIONS[task]).format(n=NUMBERS[image] if image is not None else "")


def write_demo_shards(out_dir: str | Path, n_train: int, n_eval: int, seed: int = 0, image_size: int = 48,
                      multi_turn: bool = True, shard_size: int = 1000) -> dict:
    """`train-*.tar` (multi-turn by default) and single-question `eval-*.tar` in `out_dir`, from streams seeded
    2*seed and 2*seed+1. Returns {"train": [paths], "eval": [paths], "chance": eval chance accuracy}."""
    splits = {"train": list(generate(n_train, 2 * seed, image_size, multi_turn))}
    return write_splits(out_dir, splits, _stream(2 * seed + 1, image_size, False), n_eval, ANSWERS, shard_size)
