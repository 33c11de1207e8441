"""Pins data_builders/synth/edits.py: every edit kind does what its instruction says (read back from the pixels),
the mask holds exactly the copies that changed, captions describe both images, held-out inputs are unseen."""
import io
import json
import re
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from data_builders.synth.edits import EDITS, EMPTY_CAPTION, generate, write_edit_splits
from data_builders.synth.shapes import BACKGROUND, media_digest
from mmtune.data.edits import CAPTIONS_MEMBER, MASK_MEMBER
from mmtune.data.sample import Sample, validate
from mmtune.data.stream import ShardStream
from tests.data_builders.test_shapes import CELL_NAMES, NUMBER, components, read_scene

PLACE_WORDS = {"on the left": "left", "on the right": "right", "at the top": "top", "at the bottom": "bottom"}
COUNT = {word: n for n, word in NUMBER.items()}


def pixels(png: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))


def foreground(png: bytes) -> np.ndarray:
    return np.any(pixels(png) != BACKGROUND, axis=-1)


def drawn(png: bytes, name: str) -> dict | None:
    """The scene read from the pixels, None for an empty image."""
    return read_scene(png, name) if foreground(png).any() else None


def caption_of(scene: dict | None) -> str:
    if scene is None:
        return EMPTY_CAPTION
    noun = scene["shape"] if scene["count"] == "one" else {"cross": "crosses"}.get(scene["shape"], scene["shape"] + "s")
    place = {v: f" {k}" for k, v in PLACE_WORDS.items()}.get(scene.get("position"), "")
    return f"{scene['count']} {scene['color']} {noun}{place}"


def check_edit(sample: Sample) -> None:
    before, after = drawn(sample.data["0.png"], sample.id), drawn(sample.data["1.png"], sample.id)
    prompt = sample.messages[0].content.split("\n", 1)[1]
    if sample.task == "recolour":
        color = prompt.rsplit(" ", 1)[1]
        assert after == {**before, "color": color} and color != before["color"], (sample.id, prompt)
    elif sample.task == "remove":
        assert after is None, (sample.id, prompt)
    elif sample.task == "move":
        place = prompt.rsplit(" ", 1)[1]
        assert after == {**before, "position": place} and place != before["position"], (sample.id, prompt)
        assert foreground(sample.data["0.png"]).sum() == foreground(sample.data["1.png"]).sum(), \
            f"{sample.id}: the moved copy changed size"
    else:
        place = PLACE_WORDS[re.search(r"(on the \w+|at the \w+)$", prompt).group(1)]
        assert (after["shape"], after["color"]) == (before["shape"], before["color"]), (sample.id, prompt)
        assert COUNT[after["count"]] == COUNT[before["count"]] + 1, (sample.id, prompt)
        new = np.any(pixels(sample.data["1.png"]) != pixels(sample.data["0.png"]), axis=-1)
        (component,) = components(new)
        cy, cx = component.mean(0)
        assert CELL_NAMES.get((int(3 * cy / new.shape[0]), int(3 * cx / new.shape[1]))) == place, (sample.id, prompt)
    captions = json.loads(sample.data[CAPTIONS_MEMBER])
    assert captions == {"input": caption_of(before), "edited": caption_of(after)}, sample.id


def check_mask(sample: Sample) -> None:
    """The mask is the bounding boxes of the changed copies (each copy is one component of the changed pixels:
    copies never touch, and every shape reaches the four sides of its box)."""
    changed = np.any(pixels(sample.data["0.png"]) != pixels(sample.data["1.png"]), axis=-1)
    boxes = np.zeros_like(changed)
    for copy in components(changed):
        (y0, x0), (y1, x1) = copy.min(0), copy.max(0)
        boxes[y0:y1 + 1, x0:x1 + 1] = True
    mask = np.asarray(Image.open(io.BytesIO(sample.data[MASK_MEMBER]))) > 0
    assert changed.any() and np.array_equal(mask, boxes), sample.id


def test_every_edit_kind_does_what_it_says():
    samples = list(generate(400, seed=0))
    counts = Counter(s.task for s in samples)
    assert set(counts) == set(EDITS) and min(counts.values()) > 70, counts  # equally likely by construction
    for s in samples:
        validate(s)
        assert Sample.from_json(s.to_json(), s.data).to_json() == s.to_json()
        check_edit(s)
        check_mask(s)


def test_same_seed_gives_the_same_bytes():
    assert [s.data for s in generate(30, seed=4)] == [s.data for s in generate(30, seed=4)]
    assert [s.data for s in generate(30, seed=4)] != [s.data for s in generate(30, seed=5)]


@pytest.mark.parametrize("image_size", [32, 48])
def test_masks_and_edits_hold_at_other_sizes(image_size):
    for s in generate(60, seed=1, image_size=image_size):
        check_edit(s)
        check_mask(s)


def test_splits_keep_held_out_inputs_unseen(tmp_path):
    out = write_edit_splits(tmp_path, n_train=300, n_eval=40, seed=2)

    def read(shards):
        return [item.value for item in ShardStream(shards, transform=lambda s: s, shuffle=False)]

    train, held_out = read(out["train"]), read(out["eval"])
    assert len(train) == 300 and len(held_out) == 40
    assert {media_digest(s) for s in held_out}.isdisjoint(media_digest(s) for s in train)
    assert {MASK_MEMBER, CAPTIONS_MEMBER} <= set(held_out[0].data)
    assert [s.data for s in train] == [s.data for s in generate(300, seed=4)]  # train stream: 2 * seed
