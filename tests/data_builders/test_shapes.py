"""Pins data_builders/synth/shapes.py: determinism, answers that agree with the drawn pixels, shards, chance level."""
import io
import itertools
from collections import deque

import numpy as np
import pytest
from PIL import Image

from data_builders.synth import shapes
from data_builders.synth.shapes import (ANSWERS, BACKGROUND, CAPTION, COLORS, chance_accuracy, generate,
                                        media_digest, write_demo_shards)
from mmtune.data.sample import Sample, validate
from mmtune.data.stream import ShardStream
from mmtune.errors import ConfigError, DataError

CELL_NAMES = {(1, 0): "left", (1, 2): "right", (0, 1): "top", (2, 1): "bottom"}
NUMBER = {1: "one", 2: "two", 3: "three"}


def components(mask: np.ndarray) -> list[np.ndarray]:
    """8-connected components of a boolean mask, each as an (n, 2) array of (y, x)."""
    seen = np.zeros_like(mask)
    out = []
    for start in zip(*np.nonzero(mask)):
        if seen[start]:
            continue
        seen[start] = True
        todo, pixels = deque([start]), []
        while todo:
            y, x = todo.popleft()
            pixels.append((y, x))
            for dy in (-1, 0, 1):
                for dx in (-1, 0, 1):
                    q = (y + dy, x + dx)
                    if 0 <= q[0] < mask.shape[0] and 0 <= q[1] < mask.shape[1] and mask[q] and not seen[q]:
                        seen[q] = True
                        todo.append(q)
        out.append(np.array(pixels))
    return out


def classify(pixels: np.ndarray) -> str:
    """Shape from the filled pattern inside the component's bounding box."""
    y0, x0 = pixels.min(0)
    box = np.zeros(tuple(pixels.max(0) - (y0, x0) + 1), bool)
    box[pixels[:, 0] - y0, pixels[:, 1] - x0] = True
    h, w = box.shape
    if box.all():
        return "square"
    if box[-1, 0] and not box[0, 0]:
        return "triangle"  # base fills the bottom corners, apex leaves the top ones empty
    return "circle" if box[h // 4, w // 4] else "cross"  # a cross's corner squares are a third of the box


def what_is_drawn(sample: Sample) -> dict:
    """The answer to every question type, read from the image alone (position only for a single copy)."""
    return read_scene(sample.data["0.png"], sample.id)


def read_scene(png: bytes, name: str) -> dict:
    """What `what_is_drawn` reads from one PNG; `name` is for failure messages."""
    img = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"))
    fg = np.any(img != BACKGROUND, axis=-1)
    colours = {tuple(int(v) for v in c) for c in img[fg]}
    assert len(colours) == 1, f"{name}: several colours {colours}"
    comps = components(fg)
    shapes = {classify(c) for c in comps}
    assert len(shapes) == 1, f"{name}: copies of different shapes {shapes}"
    seen = {"color": {v: k for k, v in COLORS.items()}[colours.pop()], "shape": shapes.pop(),
            "count": NUMBER[len(comps)]}
    if len(comps) == 1:
        cy, cx = comps[0].mean(0)
        seen["position"] = CELL_NAMES[(int(3 * cy / img.shape[0]), int(3 * cx / img.shape[1]))]
    return seen


def qa_pairs(sample: Sample) -> list[tuple[str, str]]:
    return [(q.content, a.content) for q, a in zip(sample.messages[::2], sample.messages[1::2])]


def test_same_seed_gives_same_samples_and_bytes():
    a, b = list(generate(40, seed=7)), list(generate(40, seed=7))
    assert [s.to_json() for s in a] == [s.to_json() for s in b]
    assert [s.data for s in a] == [s.data for s in b]
    other = list(generate(40, seed=8))
    assert {media_digest(s) for s in a}.isdisjoint(media_digest(s) for s in other)


def test_samples_are_canonical_single_turn_questions():
    samples = list(generate(300, seed=0, image_size=32))
    for s in samples:
        validate(s)
        assert Sample.from_json(s.to_json(), s.data).to_json() == s.to_json()
        assert Image.open(io.BytesIO(s.data["0.png"])).size == (32, 32)
        assert [m.role for m in s.messages] == ["user", "assistant"]
        assert s.messages[0].content.startswith("<image>\n")
        assert s.messages[1].content in ANSWERS[s.task]
    assert {s.task for s in samples} == set(ANSWERS)


@pytest.mark.parametrize("multi_turn", [False, True])
def test_answers_agree_with_the_pixels(multi_turn):
    for s in generate(300, seed=1, multi_turn=multi_turn):
        seen = what_is_drawn(s)
        answers = [a for _, a in qa_pairs(s)]
        if multi_turn:
            assert s.task == "multi"
            assert sorted(answers) == sorted(seen.values()), s.id  # every applicable question, once
            assert [q.count("<image>") for q, _ in qa_pairs(s)] == [1] + [0] * (len(answers) - 1)
        else:
            assert answers == [seen[s.task]], s.id  # a position question implies a single copy


def test_shape_classifier_sees_every_shape():
    """Guards the pixel checks above: they must meet every shape, colour, count and position."""
    seen = [what_is_drawn(s) for s in generate(300, seed=1)]
    for task, options in ANSWERS.items():
        assert {d[task] for d in seen if task in d} == set(options)


def test_captions_agree_with_the_pixels():
    for s in generate(100, seed=2, caption=True):
        seen = what_is_drawn(s)
        words = qa_pairs(s)[0][1].split()
        assert s.task == CAPTION
        assert words[:2] == [seen["count"], seen["color"]], s.id
        assert words[2].startswith(seen["shape"][:5]), s.id  # circle(s), cross(es)
        assert (words[-1] if "position" in seen else None) == seen.get("position"), s.id


def test_shards_round_trip(tmp_path):
    out = write_demo_shards(tmp_path, n_train=25, n_eval=10, seed=3, shard_size=10, n_caption=5)
    assert [len(out[k]) for k in ("train", "eval", "caption")] == [3, 1, 1]
    read = [item.value for item in ShardStream(out["train"], transform=lambda s: s, shuffle=False)]
    expected = list(generate(25, seed=9))  # train streams use 3 * seed
    assert [s.to_json() for s in read] == [s.to_json() for s in expected]
    assert [s.data for s in read] == [s.data for s in expected]
    evals = [item.value for item in ShardStream(out["eval"], transform=lambda s: s, shuffle=False)]
    assert len(evals) == 10 and all(len(s.messages) == 2 for s in evals)
    assert out["chance"] == pytest.approx(chance_accuracy(s.task for s in evals))
    captions = [item.value for item in ShardStream(out["caption"], transform=lambda s: s, shuffle=False)]
    assert {s.task for s in captions} == {CAPTION}


def test_eval_images_never_appear_in_training(tmp_path):
    # 24-pixel images have few layouts, so the eval stream does repeat training images; they must be skipped.
    out = write_demo_shards(tmp_path, n_train=2000, n_eval=200, seed=0, image_size=24, shard_size=5000)

    def digests(shards):
        return {media_digest(i.value) for i in ShardStream(shards, transform=lambda s: s, shuffle=False)}

    train, held_out = digests(out["train"]), digests(out["eval"])
    assert not {media_digest(s) for s in generate(200, seed=1, image_size=24)}.isdisjoint(train)
    assert len(held_out) > 150 and held_out.isdisjoint(train)


def test_refuses_a_directory_with_old_shards(tmp_path):
    out = write_demo_shards(tmp_path, n_train=3, n_eval=2)
    assert out["caption"] == []
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["eval-000000.tar", "train-000000.tar"]
    with pytest.raises(ConfigError, match=r"already holds \['eval-000000.tar'"):
        write_demo_shards(tmp_path, n_train=3, n_eval=2)


def test_chance_accuracy_averages_one_over_options():
    expected = (1 / 6 + 1 / 4 + 1 / 3 + 1 / 4) / 4  # 6 colours, 4 shapes, 3 counts, 4 positions
    assert chance_accuracy(["color", "shape", "count", "position"]) == pytest.approx(expected)
    assert chance_accuracy(["count", "count"]) == pytest.approx(1 / 3)
    with pytest.raises(DataError, match="question 1 has task 'caption'"):
        chance_accuracy(["color", "caption"])
    with pytest.raises(DataError, match="empty question list"):
        chance_accuracy([])


def test_bad_arguments_name_the_parameter():
    with pytest.raises(ConfigError, match="image_size must be >= 24, got 16"):
        list(generate(1, seed=0, image_size=16))
    with pytest.raises(ConfigError, match="multi_turn and caption"):
        list(generate(1, seed=0, multi_turn=True, caption=True))


def test_generation_is_lazy_and_renders_one_image_per_sample(monkeypatch):
    rendered = []
    render = shapes.render
    monkeypatch.setattr(shapes, "render", lambda scene, size: rendered.append(scene) or render(scene, size))
    assert len(list(itertools.islice(generate(10**12, seed=0), 3))) == 3
    assert len(rendered) == 3  # lazy: nothing is drawn ahead of what is taken
    assert len(list(generate(1000, seed=0))) == 1000 and len(rendered) == 1003  # one image per sample, no redraws
