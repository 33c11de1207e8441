"""`mmtune demo`: teach a small vision-language model to answer questions about synthetic shapes, on a CPU.

It writes a synthetic image-instruction set (shapes x colours x positions x counts, with a held-out split of
unseen images), trains the recipe in configs/demo/, and prints held-out answer accuracy before and after
training, next to chance, with the path of the loss-curve PNG.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

DEFAULT_CONFIG = "demo/vlm_tiny.yaml"
"""A recipe shipped inside the package (mmtune/configs/), found wherever mmtune is installed."""
DEFAULTS = {"config": DEFAULT_CONFIG, "out": "runs/demo", "eval_samples": 200}
"""This demo's values of the arguments left unset (`--task edit` has its own: mmtune/edit_demo.py)."""


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--task", choices=("image", "edit"), default="image",
                   help="image: answer questions about shapes; edit: InstructPix2Pix edits of shapes")
    p.add_argument("--config", help="demo recipe: a YAML file, or one shipped with mmtune (default: "
                                    f"{DEFAULT_CONFIG}; edit: demo/ip2p_tiny.yaml)")
    p.add_argument("--out", help="where data and the run go, replaced (default: runs/demo; edit: runs/demo_edit)")
    p.add_argument("--train-samples", type=int, default=4000)
    p.add_argument("--eval-samples", type=int,
                   help="held-out questions scored for accuracy, or edits for PSNR (default: 200; edit: 64)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--single-turn", action="store_true",
                   help="one question per training sample (default: every question about an image in one chat)")
    p.add_argument("overrides", nargs="*", help="section.key=value overrides of the recipe, e.g. train.steps=100")


def held_out_questions(shards: list[str], limit: int):
    """(question messages, PIL image, reference answer, task) for the first `limit` held-out samples."""
    from mmtune.data.media import decode_image
    from mmtune.data.stream import ShardStream

    out = []
    for item in ShardStream(shards, lambda s: s, shuffle=False):
        s = item.value
        img = decode_image(s.data[s.media[0].member], f"{s.id} image")
        out.append((s.messages[:-1], img, s.messages[-1].content, s.task))
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
            preds += generate(model, tokenizer, callback.cfg, [q[0] for q in chunk], [[q[1]] for q in chunk],
                              max_new_tokens=8)
        model.train(was_training)
        acc = accuracy(preds, [q[2] for q in questions], [q[3] for q in questions])
        shown = "; ".join(f"{q[0][-1].content.splitlines()[-1]} -> {p!r} (ref {q[2]!r})"
                          for q, p in zip(questions[:3], preds[:3]))
        per_task = " ".join(f"{k} {v['accuracy']:.2f}" for k, v in sorted(acc["per_task"].items()))
        log.say(f"step {step}: held-out accuracy {acc['accuracy']:.3f} ({per_task}) | e.g. {shown}")
        callback.history.append((step, acc["accuracy"]))
        return {"accuracy": acc["accuracy"], **{f"accuracy/{k}": v["accuracy"] for k, v in acc["per_task"].items()}}

    callback.history = []
    return callback


def main(args) -> int:
    from data_builders.synth.shapes import write_demo_shards
    from mmtune.recipe import load_recipe
    from mmtune.errors import UserError
    from mmtune.train.trainer import train

    from mmtune import edit_demo

    task_defaults = edit_demo.DEFAULTS if args.task == "edit" else DEFAULTS
    for name, value in task_defaults.items():
        if getattr(args, name) is None:
            setattr(args, name, value)
    for flag, n in (("--train-samples", args.train_samples), ("--eval-samples", args.eval_samples)):
        if n < 1:
            raise UserError(f"{flag}: must be at least 1, got {n}")
    if args.task == "edit":
        return edit_demo.main(args)
    started = time.perf_counter()
    out = Path(args.out)
    cfg = load_recipe(args.config, [f"train.out_dir={out / 'run'}", *args.overrides])
    data_dir = out / "data"
    shutil.rmtree(data_dir, ignore_errors=True)
    image_size = encoder_image_size(cfg)
    print(f"writing {args.train_samples} training and {args.eval_samples} held-out samples to {data_dir} ...")
    written = write_demo_shards(data_dir, args.train_samples, args.eval_samples, seed=args.seed,
                                image_size=image_size, multi_turn=not args.single_turn)
    cfg.data.train, cfg.data.eval = written["train"], written["eval"]
    questions = held_out_questions(written["eval"], args.eval_samples)
    example = data_dir / "heldout-0.png"
    questions[0][1].save(example)  # an image to try `mmtune chat` on
    callback = accuracy_callback(questions)
    callback.cfg = cfg
    shutil.rmtree(out / "run", ignore_errors=True)
    summary = train(cfg, callbacks=[callback])
    before, after = callback.history[0][1], callback.history[-1][1]
    minutes = (time.perf_counter() - started) / 60
    print(f"\nheld-out accuracy: {before:.3f} before -> {after:.3f} after training "
          f"(chance {written['chance']:.3f}); {minutes:.1f} min")
    print(f"loss curve: {summary['loss_curve']}")
    print(f"try it: {mmtune_command()} chat --ckpt {out / 'run'} --image {example} --prompt 'How many shapes are there?'")
    return 0


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


def encoder_image_size(cfg) -> int:
    """The side of the images the recipe's image encoder reads: the size the shapes are drawn at."""
    from mmtune.encoders import build_encoder
    from mmtune.errors import UserError

    if cfg.model.media.image is None:
        raise UserError("the shapes demo needs an image encoder: set model.media.image in the recipe")
    return build_encoder(cfg.model.media.image.encoder).image_size
