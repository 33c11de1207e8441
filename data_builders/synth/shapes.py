"""Synthetic shapes VQA: small PIL images of coloured shapes with one-word questions, for the built-in demo.

Each image is a 3×3 grid of cells on a white background; every drawn copy sits inside its own cell with a gap of
at least two pixels to any other copy, and pixels are drawn without anti-aliasing, so colours are exact and copies
never touch. Answers are unambiguous by construction: all copies in an image share colour and shape, and the
position (the left, right, top or bottom edge cell) is asked only when there is a single copy.
Everything derives from `random.Random(f"shapes-{seed}-{i}")` for sample i, so a sample is reproducible on its own.
"""
from __future__ import annotations

import hashlib
import io
import itertools
import math
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

from PIL import Image, ImageDraw

from mmtune.data.sample import Media, Message, Sample
from mmtune.data.shards import ShardSink
from mmtune.errors import ConfigError, DataError

SOURCE = "synth/shapes"
BACKGROUND = (255, 255, 255)
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 170, 70), "blue": (40, 80, 220),
    "yellow": (235, 200, 30), "purple": (140, 70, 190), "orange": (245, 140, 30),
}
SHAPES = ("circle", "square", "triangle", "cross")
PLURALS = {"circle": "circles", "square": "squares", "triangle": "triangles", "cross": "crosses"}
COUNT_WORDS = ("one", "two", "three")
POSITION_CELLS: dict[str, tuple[int, int]] = {"left": (1, 0), "right": (1, 2), "top": (0, 1), "bottom": (2, 1)}
"""Position answer -> (row, column) of the grid cell a single copy is drawn in."""
PLACES = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}

CAPTION = "caption"
"""Task name of the stage-1 caption samples ("Describe the image." -> "two red circles")."""
ANSWERS: dict[str, tuple[str, ...]] = {
    "color": tuple(COLORS), "shape": SHAPES, "count": COUNT_WORDS, "position": tuple(POSITION_CELLS),
}
"""Every possible answer per question type; the task names of single-turn question samples are its keys."""
MULTI_TURN = "multi"
"""Task name of multi-turn samples (every applicable question about one image)."""

QUESTIONS: dict[str, tuple[str, ...]] = {
    "color": ("What color {be} the {noun}?", "Which color {be} the {noun} in the image?"),
    "shape": ("What shape is shown in the image?", "What kind of shape is drawn?"),
    "count": ("How many shapes are there?", "How many shapes are in the image?"),
    "position": ("Where is the shape?", "On which side of the image is the shape?"),
    CAPTION: ("Describe the image.", "Give a short description of the image."),
}
MIN_IMAGE_SIZE = 24
"""Below this a grid cell is under 8 pixels and shapes stop being recognisable."""


@dataclass(frozen=True)
class Scene:
    """What one image shows; `boxes` are inclusive pixel boxes (x0, y0, x1, y1), one per copy."""
    shape: str
    color: str
    boxes: tuple[tuple[int, int, int, int], ...]
    position: str | None
    """Set only when there is one copy."""

    @property
    def count(self) -> int:
        return len(self.boxes)


def generate(n: int, seed: int, image_size: int = 64, multi_turn: bool = False,
             caption: bool = False) -> Iterator[Sample]:
    """`n` samples, deterministic from `seed`.

    Default: one question per image, its type drawn uniformly among those that apply (`task` names it).
    `multi_turn`: every applicable question about the image in one conversation (task "multi").
    `caption`: one "Describe the image." turn per image (task "caption"), for projector pre-training.
    """
    if n < 0:
        raise ConfigError(f"shapes: n must be >= 0, got {n}")
    return itertools.islice(_stream(seed, image_size, multi_turn, caption), n)


def _stream(seed: int, image_size: int, multi_turn: bool, caption: bool) -> Iterator[Sample]:
    if image_size < MIN_IMAGE_SIZE:
        raise ConfigError(f"shapes: image_size must be >= {MIN_IMAGE_SIZE}, got {image_size}")
    if multi_turn and caption:
        raise ConfigError("shapes: multi_turn and caption cannot both be set")
    for i in itertools.count():
        rng = random.Random(f"shapes-{seed}-{i}")
        scene = random_scene(rng, image_size)
        if caption:
            turns = [(CAPTION, _question(rng, CAPTION, scene), describe(scene))]
        elif multi_turn:
            tasks = _tasks(scene)
            rng.shuffle(tasks)
            turns = [(t, _question(rng, t, scene), answer(scene, t)) for t in tasks]
        else:
            task = rng.choice(_tasks(scene))
            turns = [(task, _question(rng, task, scene), answer(scene, task))]
        yield qa_sample(f"shapes-{seed}-{i:07d}", SOURCE, MULTI_TURN if multi_turn else turns[0][0],
                        [(q, a) for _, q, a in turns], [("image", "0.png", render(scene, image_size))])


def random_scene(rng: random.Random, image_size: int) -> Scene:
    """Pick shape, colour and 1-3 grid cells; a single copy goes to one of the four edge cells."""
    shape, color = rng.choice(SHAPES), rng.choice(tuple(COLORS))
    count = rng.randint(1, len(COUNT_WORDS))
    if count == 1:
        position = rng.choice(tuple(POSITION_CELLS))
        cells = [POSITION_CELLS[position]]
    else:
        position = None
        cells = rng.sample([(r, c) for r in range(3) for c in range(3)], k=count)
    return Scene(shape, color, tuple(_box_in_cell(rng, image_size, r, c) for r, c in cells), position)


def _box_in_cell(rng: random.Random, image_size: int, row: int, col: int) -> tuple[int, int, int, int]:
    """A square box of 45-75% of the cell, at least one pixel inside every cell edge."""
    x0, x1 = round(col * image_size / 3), round((col + 1) * image_size / 3)
    y0, y1 = round(row * image_size / 3), round((row + 1) * image_size / 3)
    inner = min(x1 - x0, y1 - y0)
    side = rng.randint(math.ceil(inner * 0.45), min(int(inner * 0.75), inner - 2))
    bx, by = x0 + rng.randint(1, x1 - x0 - side - 1), y0 + rng.randint(1, y1 - y0 - side - 1)
    return bx, by, bx + side - 1, by + side - 1


def render(scene: Scene, image_size: int) -> bytes:
    """PNG bytes of the scene (RGB, no anti-aliasing, so every pixel is the background or the shape colour)."""
    return png(draw(scene, image_size))


def draw(scene: Scene, image_size: int) -> Image.Image:
    """The scene as an RGB image of `image_size` pixels a side (video frames and image grids draw with it too)."""
    img = Image.new("RGB", (image_size, image_size), BACKGROUND)
    pen = ImageDraw.Draw(img)
    fill = COLORS[scene.color]
    for x0, y0, x1, y1 in scene.boxes:
        if scene.shape == "circle":
            pen.ellipse((x0, y0, x1, y1), fill=fill)
        elif scene.shape == "square":
            pen.rectangle((x0, y0, x1, y1), fill=fill)
        elif scene.shape == "triangle":  # apex up, base on the box's bottom edge
            pen.polygon([(x0, y1), (x1, y1), ((x0 + x1) / 2, y0)], fill=fill)
        else:  # cross: a plus sign whose arms are a third of the box wide
            t = max(1, round((x1 - x0 + 1) / 3))
            pen.rectangle((x0 + t, y0, x1 - t, y1), fill=fill)
            pen.rectangle((x0, y0 + t, x1, y1 - t), fill=fill)
    return img


def png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def answer(scene: Scene, task: str) -> str:
    """The one-word answer to a question of type `task` (a key of ANSWERS) about `scene`."""
    if task == "color":
        return scene.color
    if task == "shape":
        return scene.shape
    if task == "count":
        return COUNT_WORDS[scene.count - 1]
    if task == "position" and scene.position is not None:
        return scene.position
    raise DataError(f"shapes: no {task!r} question applies to a scene of {scene.count} {scene.shape}(s)")


def describe(scene: Scene) -> str:
    """Caption answer, e.g. "one red circle on the left", "one red circle at the top" or "three blue crosses"."""
    noun = scene.shape if scene.count == 1 else PLURALS[scene.shape]
    text = f"{COUNT_WORDS[scene.count - 1]} {scene.color} {noun}"
    return f"{text} {PLACES[scene.position]}" if scene.position else text


def _tasks(scene: Scene) -> list[str]:
    return [t for t in ANSWERS if t != "position" or scene.position is not None]


def _question(rng: random.Random, task: str, scene: Scene) -> str:
    be, noun = ("is", "shape") if scene.count == 1 else ("are", "shapes")
    return rng.choice(QUESTIONS[task]).format(be=be, noun=noun)


def qa_sample(sample_id: str, source: str, task: str, turns: list[tuple[str, str]],
              media: list[tuple[str, str, bytes]]) -> Sample:
    """A sample of question-answer `turns` about `media` ((kind, member, bytes) in order); one placeholder per item
    opens the first question, as builders put them where a source gives none."""
    placeholders = "".join(f"<{kind}>\n" for kind, _, _ in media)
    messages: list[Message] = []
    for j, (question, reply) in enumerate(turns):
        messages += [Message("user", placeholders + question if j == 0 else question), Message("assistant", reply)]
    return Sample(id=sample_id, source=source, task=task, messages=messages,
                  media=[Media(kind, member) for kind, member, _ in media],
                  data={member: data for _, member, data in media})


def chance_accuracy(tasks: Iterable[str], answers: dict[str, tuple[str, ...]] = ANSWERS) -> float:
    """Expected accuracy of guessing uniformly among answers[task], averaged over the questions' `tasks`."""
    odds = []
    for k, task in enumerate(tasks):
        if task not in answers:
            raise DataError(f"synth: question {k} has task {task!r}; chance is defined for {tuple(answers)}")
        odds.append(1 / len(answers[task]))
    if not odds:
        raise DataError("synth: chance accuracy of an empty question list")
    return sum(odds) / len(odds)


def media_digest(sample: Sample) -> bytes:
    """Identity of what a sample shows (its media's bytes, in order; not an edit's target), for keeping held-out
    media out of training."""
    digest = hashlib.sha1()
    for m in sample.media:
        digest.update(sample.data[m.member])
    return digest.digest()


def unseen(samples: Iterable[Sample], seen: set[bytes]) -> Iterator[Sample]:
    """The samples whose media are not in `seen` (a set of media_digest values)."""
    return (s for s in samples if media_digest(s) not in seen)


def write_demo_shards(out_dir: str | Path, n_train: int, n_eval: int, seed: int = 0, image_size: int = 64,
                      shard_size: int = 1000, multi_turn: bool = False, n_caption: int = 0) -> dict:
    """Write `train-*.tar`, `eval-*.tar` (and `caption-*.tar` when n_caption > 0) into `out_dir`.

    Streams use seeds 3*seed, 3*seed+1, 3*seed+2, so no two splits of any seed share a stream. Eval is always
    single-turn so accuracy can be reported per question type. Returns
    `{"train": [paths], "eval": [paths], "caption": [paths], "chance": eval chance accuracy or None}`.
    """
    splits = {"train": list(generate(n_train, 3 * seed, image_size, multi_turn=multi_turn)),
              CAPTION: list(generate(n_caption, 3 * seed + 2, image_size, caption=True))}
    return write_splits(out_dir, splits, _stream(3 * seed + 1, image_size, False, False), n_eval, ANSWERS,
                        shard_size)


def check_fresh(out_dir: str | Path, prefixes: Iterable[str]) -> None:
    """Refuse an `out_dir` that already holds shards of these prefixes: ShardSink indexes every shard of its
    prefix, so old ones would join the new set."""
    stale = sorted(p.name for prefix in prefixes for p in Path(out_dir).glob(f"{prefix}-*.tar"))
    if stale:
        raise ConfigError(f"synth: {out_dir} already holds {stale[:3]}{'...' if len(stale) > 3 else ''}; "
                          f"remove them or pick another out_dir")


def write_splits(out_dir: str | Path, splits: dict[str, list[Sample]], eval_stream: Iterator[Sample], n_eval: int,
                 answers: dict[str, tuple[str, ...]], shard_size: int = 1000) -> dict:
    """Write each of `splits` as `<name>-*.tar`, and as `eval-*.tar` the first `n_eval` samples of `eval_stream`
    whose media no split shows (small media can coincide by chance). Returns {name: [paths]} for every split and
    eval, and "chance": the eval questions' chance accuracy (None without eval samples)."""
    if shard_size <= 0:
        raise ConfigError(f"synth: shard_size must be > 0, got {shard_size}")
    check_fresh(out_dir, (*splits, "eval"))
    evals = held_out(eval_stream, {media_digest(s) for samples in splits.values() for s in samples}, n_eval)
    written = {name: _write(out_dir, name, samples, shard_size) for name, samples in splits.items()}
    return {**written, "eval": _write(out_dir, "eval", evals, shard_size),
            "chance": chance_accuracy((s.task for s in evals), answers) if evals else None}


def held_out(stream: Iterator[Sample], seen: set[bytes], n: int) -> list[Sample]:
    """First `n` samples of `stream` whose media are not in `seen`; gives up when the space of scenes runs out."""
    tries = 20 * n + 1000
    out = list(itertools.islice(unseen(itertools.islice(stream, tries), seen), n))
    if len(out) < n:
        raise ConfigError(f"synth: found only {len(out)} of n_eval={n} samples unseen in training after {tries} "
                          f"draws; lower n_train or raise the image size")
    return out


def _write(out_dir: str | Path, prefix: str, samples: list[Sample], shard_size: int) -> list[str]:
    """Shard paths written; none for an empty split (ShardSink would leave one empty tar)."""
    if not samples:
        return []
    sink = ShardSink(out_dir, prefix=prefix, maxcount=shard_size)
    for s in samples:
        sink.write(s)
    return [str(p) for p in sink.close()]
