"""`mmtune demo`: teach a small multimodal language model to answer questions on a CPU, for each media kind.

A task (`--task`, a key of TASKS) writes a synthetic instruction set with a held-out split of unseen media (shapes
in an image; a moving shape in a video; a solid as a point cloud; three images to compare), trains its recipe in
configs/demo/, and prints held-out answer accuracy before and after training, next to chance, with the path of
the loss-curve PNG and a `mmtune chat` line to try the result on a held-out example.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, NamedTuple

from mmtune.errors import UserError


@dataclass(frozen=True)
class DemoTask:
    """One `mmtune demo --task`: its recipe (shipped inside the package, mmtune/configs/, so it is found wherever
    mmtune is installed) and its data writer, (out_dir, args, cfg) -> {"train": shards, "eval": shards, "chance"}."""
    config: str
    write: Callable[[Path, argparse.Namespace, object], dict]
    train_samples: int
    about: str
    single_turn: bool = False
    """Train on one question a sample, as if `--single-turn` were given: a bridge that reads its item's instruction
    reads the turn its placeholder sits in, so in a multi-turn chat it would serve every later question blind."""


def _write_image(out: Path, args, cfg) -> dict:
    from data_builders.synth.shapes import write_demo_shards

    return write_demo_shards(out, args.train_samples, args.eval_samples, seed=args.seed,
                             image_size=encoder_image_size(cfg, "shapes"), multi_turn=not args.single_turn)


def _write_sized_by_generator(out: Path, args, cfg) -> dict:
    """Video and points: the generator fixes the media sizes (frames, points), the recipe's encoder samples them."""
    from data_builders.synth import points, video

    generator = {"video": video, "points": points}[args.task]
    return generator.write_demo_shards(out, args.train_samples, args.eval_samples, seed=args.seed)


def _write_multi_image(out: Path, args, cfg) -> dict:
    from data_builders.synth.multi_image import write_demo_shards

    return write_demo_shards(out, args.train_samples, args.eval_samples, seed=args.seed,
                             image_size=encoder_image_size(cfg, "multi-image"), multi_turn=not args.single_turn)


EDIT_TRAIN_SAMPLES = 4000
"""`--task edit` (mmtune/edit_demo.py, its own loop: an image editor is scored by PSNR, not answers)."""
TASKS: dict[str, DemoTask] = {
    "image": DemoTask("demo/vlm_tiny.yaml", _write_image, 4000, "colour, shape, count and place of shapes"),
    "image-qformer": DemoTask("demo/qformer_tiny.yaml", _write_image, 12000,
                              "the same through InstructBLIP's instruction-aware Q-Former", single_turn=True),
    "video": DemoTask("demo/video_tiny.yaml", _write_sized_by_generator, 8000,
                      "the colour a moving shape has first, or last"),
    "points": DemoTask("demo/points_tiny.yaml", _write_sized_by_generator, 3000,
                       "which solid a rotated, scaled, noisy point cloud shows"),
    "multi-image": DemoTask("demo/multi_image_tiny.yaml", _write_multi_image, 12000,
                            "the colour two of three images share, or the odd one's"),
}


def add_arguments(p: argparse.ArgumentParser) -> None:
    tasks = "; ".join(f"{name}: {task.about}" for name, task in TASKS.items())
    p.add_argument("--task", choices=(*TASKS, "edit"), default="image",
                   help=f"what to learn ({tasks}; edit: InstructPix2Pix edits of shapes)")
    p.add_argument("--config", help="demo recipe: a YAML file, or one shipped with mmtune (default: the task's, "
                                    + ", ".join(f"{t.config}" for t in TASKS.values()) + "; edit: demo/ip2p_tiny.yaml)")
    p.add_argument("--out", help="where data and the run go (replaced; default: runs/demo, runs/demo-<task>, "
                                 "runs/demo_edit)")
    p.add_argument("--train-samples", type=int, help="default: the task's (" +
                   ", ".join(f"{name} {t.train_samples}" for name, t in TASKS.items()) + f", edit {EDIT_TRAIN_SAMPLES})")
    p.add_argument("--eval-samples", type=int,
                   help="held-out questions scored for accuracy, or edits for PSNR (default: 200; edit: 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--single-turn", action="store_true",
                   help="image and multi-image: one question per training sample (default: every question about "
                        "the media in one chat; image-qformer: always one)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the recipe, e.g. train.steps=100")


class Question(NamedTuple):
    """A held-out question: the messages up to its user turn, its media (decoded images, file bytes of the other
    kinds, as `generate` takes them), the reference answer and the question type."""
    messages: list
    images: list
    media: dict[str, list[bytes]]
    answer: str
    task: str


def held_out_questions(shards: list[str], limit: int) -> list[Question]:
    """The first `limit` held-out samples as questions."""
    from mmtune.data.media import decode_image
    from mmtune.data.stream import ShardStream

    out = []
    for item in ShardStream(shards, lambda s: s, shuffle=False):
        s = item.value
        media: dict[str, list[bytes]] = {}
        for m in s.media:
            media.setdefault(m.kind, []).append(s.data[m.member])
        images = [decode_image(data, f"{s.where} member image {k}") for k, data in enumerate(media.pop("image", []))]
        out.append(Question(s.messages[:-1], images, media, s.messages[-1].content, s.task))
        if len(out) == limit:
            break
    return out


def accuracy_callback(questions, batch_size: int = 64):
    """A trainer callback that scores greedy answers on the held-out questions at every eval."""
    from mmtune.eval.vqa import accuracy
    from mmtune.infer.generate import generate

    def callback(event: str, step: int, model, tokenizer, log, **_):
        if callback.history and callback.history[-1][0] == step:  # "end" right after the final eval
            return {"accuracy": callback.history[-1][1]}
        was_training = model.training
        model.eval()
        preds = []
        for i in range(0, len(questions), batch_size):
            chunk = questions[i:i + batch_size]
            preds += generate(model, tokenizer, callback.cfg, [q.messages for q in chunk], [q.images for q in chunk],
                              max_new_tokens=8, media=[q.media for q in chunk])
        model.train(was_training)
        acc = accuracy(preds, [q.answer for q in questions], [q.task for q in questions])
        shown = "; ".join(f"{q.messages[-1].content.splitlines()[-1]} -> {p!r} (ref {q.answer!r})"
                          for q, p in zip(questions[:3], preds[:3]))
        per_task = " ".join(f"{k} {v['accuracy']:.2f}" for k, v in sorted(acc["per_task"].items()))
        log.say(f"step {step}: held-out accuracy {acc['accuracy']:.3f} ({per_task}) | e.g. {shown}")
        callback.history.append((step, acc["accuracy"]))
        return {"accuracy": acc["accuracy"], **{f"accuracy/{k}": v["accuracy"] for k, v in acc["per_task"].items()}}

    callback.history = []
    return callback


def main(args) -> int:
    from mmtune.recipe import load_recipe
    from mmtune.train.trainer import train

    if args.task == "edit":
        from mmtune import edit_demo

        defaults = {**edit_demo.DEFAULTS, "train_samples": EDIT_TRAIN_SAMPLES}
    else:
        task = TASKS[args.task]
        defaults = {"train_samples": task.train_samples, "eval_samples": 200}
    args = argparse.Namespace(**{**vars(args), **{k: v for k, v in defaults.items() if getattr(args, k) is None}})
    for flag, n in (("--train-samples", args.train_samples), ("--eval-samples", args.eval_samples)):
        if n < 1:
            raise UserError(f"{flag}: must be at least 1, got {n}")
    if args.task == "edit":
        return edit_demo.main(args)
    args.single_turn = args.single_turn or task.single_turn
    started = time.perf_counter()
    out = Path(args.out or ("runs/demo" if args.task == "image" else f"runs/demo-{args.task}"))
    cfg = load_recipe(args.config or task.config, [f"train.out_dir={out / 'run'}", *args.overrides])
    data_dir = out / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    print(f"writing {args.train_samples} training and {args.eval_samples} held-out samples to {data_dir} ...")
    written = task.write(data_dir, args, cfg)
    cfg.data.train, cfg.data.eval = written["train"], written["eval"]
    questions = held_out_questions(written["eval"], args.eval_samples)
    callback = accuracy_callback(questions)
    callback.cfg = cfg
    shutil.rmtree(out / "run", ignore_errors=True)
    summary = train(cfg, callbacks=[callback])
    before, after = callback.history[0][1], callback.history[-1][1]
    minutes = (time.perf_counter() - started) / 60
    print(f"\nheld-out accuracy: {before:.3f} before -> {after:.3f} after training "
          f"(chance {written['chance']:.3f}); {minutes:.1f} min")
    print(f"loss curve: {summary['loss_curve']}")
    print(f"try it: {mmtune_command()} chat --ckpt {out / 'run'} {try_it(written['eval'], data_dir)}")
    return 0


def try_it(eval_shards: list[str], data_dir: Path) -> str:
    """`chat` arguments that ask the first held-out question: its media saved next to the data (an image to open,
    a video to play), one flag per item, and the question without placeholders (chat puts them where training did)."""
    from mmtune.data.sample import PLACEHOLDER_RE
    from mmtune.data.stream import ShardStream

    sample = next(iter(ShardStream(eval_shards, lambda s: s, shuffle=False))).value
    flags = []
    for m in sample.media:
        path = data_dir / f"heldout-0-{m.member}"
        path.write_bytes(sample.data[m.member])
        flags += [f"--{m.kind}", shlex.quote(str(path))]
    question = PLACEHOLDER_RE.sub("", sample.messages[0].content).strip()
    return " ".join([*flags, "--prompt", shlex.quote(question)])


def mmtune_command() -> str:
    """How to call mmtune from this shell: `mmtune` when it is on PATH, else the venv's script (`.venv/bin/mmtune`
    after `make demo`), else `python -m mmtune.cli` with this interpreter."""
    script = Path(sys.executable).parent / "mmtune"
    on_path = shutil.which("mmtune")
    if on_path and script.exists() and Path(on_path).resolve() == script.resolve():
        return "mmtune"
    if script.exists():
        return os.path.relpath(script) if not os.path.relpath(script).startswith("../..") else str(script)
    return f"{sys.executable} -m mmtune.cli"


def encoder_image_size(cfg, demo: str = "shapes") -> int:
    """The side of the images the recipe's image encoder reads: the size the shapes are drawn at."""
    from mmtune.encoders import build_encoder

    if cfg.model.media.image is None:
        raise UserError(f"the {demo} demo needs an image encoder: set model.media.image in the recipe")
    return build_encoder(cfg.model.media.image.encoder).image_size
