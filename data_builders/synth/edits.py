"""Synthetic edit triplets for the image-editing demo, tests and evaluation: a shapes scene (synth/shapes.py), an
instruction that recolours, moves, removes or adds a shape, and the scene rendered after the edit.

Pixel-exact by construction, so each sample also carries what evaluation needs and real data rarely has: the
changed region (`mask.png`: the boxes of every copy the edit touches, before and after) and a caption of the image
before and after the edit (`captions.json`, for CLIP directional similarity). A moved or added copy keeps a place
the instruction and the input decide (same offset in the new cell; an added copy has the first copy's size, centred),
so the target is predictable from what the model sees. The four kinds are equally frequent (a scene is drawn again
until the kind applies). Sample i derives from `random.Random(f"edits-{seed}-{i}")` alone.
"""
from __future__ import annotations

import io
import itertools
import json
import random
from dataclasses import replace
from pathlib import Path
from typing import Iterator

from PIL import Image, ImageDraw

from data_builders.synth.shapes import (COLORS, PLACES, PLURALS, POSITION_CELLS, Scene, describe, held_out,
                                        media_digest, random_scene, render)
from mmtune.data.edits import CAPTIONS_MEMBER, MASK_MEMBER
from mmtune.data.sample import Media, Message, Sample
from mmtune.data.shards import ShardSink

SOURCE = "synth/edits"
EDITS = ("recolour", "move", "remove", "add")
"""Edit kinds; a sample's `task` names its kind."""
EMPTY_CAPTION = "an empty white image"


def generate(n: int, seed: int, image_size: int = 32) -> Iterator[Sample]:
    return itertools.islice(_stream(seed, image_size), n)


def _stream(seed: int, image_size: int) -> Iterator[Sample]:
    for i in itertools.count():
        rng = random.Random(f"edits-{seed}-{i}")
        kind = rng.choice(EDITS)
        scene = random_scene(rng, image_size)
        while not applies(kind, scene, image_size):
            scene = random_scene(rng, image_size)
        prompt, edited = EDIT_FUNCTIONS[kind](rng, scene, image_size)
        yield Sample(f"edits-{seed}-{i:07d}", [Message("user", f"<image>\n{prompt}")], source=SOURCE, task=kind,
                     media=[Media("image", "0.png")], target=Media("image", "1.png"),
                     data={"0.png": render(scene, image_size), "1.png": render(edited, image_size),
                           MASK_MEMBER: box_mask(changed_boxes(scene, edited), image_size),
                           CAPTIONS_MEMBER: json.dumps({"input": caption(scene), "edited": caption(edited)}).encode()})


def applies(kind: str, scene: Scene, image_size: int) -> bool:
    """Move needs a single copy (its place has a name); add needs fewer than three copies and a free edge cell."""
    if kind == "move":
        return scene.count == 1
    if kind == "add":
        return scene.count < 3 and bool(free_places(scene, image_size))
    return True


def changed_boxes(scene: Scene, edited: Scene) -> set[tuple[int, int, int, int]]:
    """Boxes of the copies that differ: a copy changes unless the same box holds the same colour after the edit."""
    before = {(box, scene.color) for box in scene.boxes}
    after = {(box, edited.color) for box in edited.boxes}
    return {box for box, _ in before ^ after}


def _recolour(rng: random.Random, scene: Scene, image_size: int) -> tuple[str, Scene]:
    color = rng.choice([c for c in COLORS if c != scene.color])
    return f"make the {_noun(scene)} {color}", replace(scene, color=color)


def _remove(rng: random.Random, scene: Scene, image_size: int) -> tuple[str, Scene]:
    return f"remove the {_noun(scene)}", replace(scene, boxes=(), position=None)


def _move(rng: random.Random, scene: Scene, image_size: int) -> tuple[str, Scene]:
    place = rng.choice([p for p in POSITION_CELLS if p != scene.position])
    (x0, y0, x1, y1), = scene.boxes
    old_left, old_top, _, _ = cell_bounds(POSITION_CELLS[scene.position], image_size)
    left, top, right, bottom = cell_bounds(POSITION_CELLS[place], image_size)
    side = x1 - x0 + 1
    nx = min(max(left + x0 - old_left, left + 1), right - side - 1)
    ny = min(max(top + y0 - old_top, top + 1), bottom - side - 1)
    return (f"move the {scene.shape} to the {place}",
            replace(scene, boxes=((nx, ny, nx + side - 1, ny + side - 1),), position=place))


def _add(rng: random.Random, scene: Scene, image_size: int) -> tuple[str, Scene]:
    place = rng.choice(free_places(scene, image_size))
    left, top, right, bottom = cell_bounds(POSITION_CELLS[place], image_size)
    x0, _, x1, _ = scene.boxes[0]
    side = x1 - x0 + 1
    nx, ny = (left + right - side) // 2, (top + bottom - side) // 2
    return (f"add another {scene.shape} {PLACES[place]}",
            replace(scene, boxes=(*scene.boxes, (nx, ny, nx + side - 1, ny + side - 1)), position=None))


EDIT_FUNCTIONS = {"recolour": _recolour, "move": _move, "remove": _remove, "add": _add}
"""kind -> (rng, scene, image size) -> (instruction, edited scene)."""


def _noun(scene: Scene) -> str:
    return scene.shape if scene.count == 1 else PLURALS[scene.shape]


def cell_bounds(cell: tuple[int, int], image_size: int) -> tuple[int, int, int, int]:
    """(left, top, right, bottom) of a grid cell, right and bottom exclusive: the same grid as shapes.py draws."""
    row, col = cell
    return (round(col * image_size / 3), round(row * image_size / 3), round((col + 1) * image_size / 3),
            round((row + 1) * image_size / 3))


def free_places(scene: Scene, image_size: int) -> list[str]:
    """Edge places whose cell holds no copy (a copy lies inside one cell; its centre says which)."""
    taken = {((y0 + y1) * 3 // (2 * image_size), (x0 + x1) * 3 // (2 * image_size)) for x0, y0, x1, y1 in scene.boxes}
    return [p for p, cell in POSITION_CELLS.items() if cell not in taken]


def caption(scene: Scene) -> str:
    return describe(scene) if scene.count else EMPTY_CAPTION


def box_mask(boxes, image_size: int) -> bytes:
    """PNG (mode L) that is 255 inside the (inclusive) boxes and 0 elsewhere."""
    mask = Image.new("L", (image_size, image_size), 0)
    draw = ImageDraw.Draw(mask)
    for box in boxes:
        draw.rectangle(box, fill=255)
    buf = io.BytesIO()
    mask.save(buf, format="PNG")
    return buf.getvalue()


def write_edit_shards(out_dir: str | Path, prefix: str, n: int, seed: int = 0, image_size: int = 32) -> list[str]:
    return _write(out_dir, prefix, generate(n, seed, image_size))


def write_edit_splits(out_dir: str | Path, n_train: int, n_eval: int, seed: int = 0,
                      image_size: int = 32) -> dict[str, list[str]]:
    """`train-*.tar` and `eval-*.tar` from streams 2*seed and 2*seed+1; no held-out input image is a training one."""
    train = list(generate(n_train, 2 * seed, image_size))
    evals = held_out(_stream(2 * seed + 1, image_size), {media_digest(s) for s in train}, n_eval)
    return {"train": _write(out_dir, "train", train), "eval": _write(out_dir, "eval", evals)}


def _write(out_dir: str | Path, prefix: str, samples) -> list[str]:
    with ShardSink(out_dir, prefix) as sink:
        for sample in samples:
            sink.write(sample)
    return [str(p) for p in sorted(Path(out_dir).glob(f"{prefix}-*.tar"))]
