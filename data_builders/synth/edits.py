"""Synthetic edit triplets for the image-editing demo and tests: a shapes scene (synth/shapes.py), an instruction
that recolours or removes its shapes, and the scene rendered after the edit. Pixel-exact by construction, so the
changed region is known. Sample i derives from `random.Random(f"edits-{seed}-{i}")` alone.
"""
from __future__ import annotations

import random
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from data_builders.synth.shapes import COLORS, PLURALS, random_scene, render
from mmtune.data.sample import Media, Message, Sample
from mmtune.data.shards import ShardSink

SOURCE = "synth/edits"
EDITS = ("recolour", "remove")


def generate(n: int, seed: int, image_size: int = 32) -> Iterator[Sample]:
    for i in range(n):
        rng = random.Random(f"edits-{seed}-{i}")
        scene = random_scene(rng, image_size)
        noun = scene.shape if scene.count == 1 else PLURALS[scene.shape]
        if rng.choice(EDITS) == "recolour":
            color = rng.choice([c for c in COLORS if c != scene.color])
            prompt, edited = f"make the {noun} {color}", replace(scene, color=color)
        else:
            prompt, edited = f"remove the {noun}", replace(scene, boxes=())
        yield Sample(f"edits-{seed}-{i:07d}", [Message("user", f"<image>\n{prompt}")], source=SOURCE, task="edit",
                     media=[Media("image", "0.png")], target=Media("image", "1.png"),
                     data={"0.png": render(scene, image_size), "1.png": render(edited, image_size)})


def write_edit_shards(out_dir: str | Path, prefix: str, n: int, seed: int = 0, image_size: int = 32) -> list[str]:
    with ShardSink(out_dir, prefix) as sink:
        for sample in generate(n, seed, image_size):
            sink.write(sample)
    return [str(p) for p in sorted(Path(out_dir).glob(f"{prefix}-*.tar"))]
