"""`mmtune train | build-data | chat | export | eval | edit | demo`. Heavy libraries are imported inside each command, so `--help` and
config errors come back at once. User errors print one line and exit 2, without a traceback."""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from mmtune.errors import UserError
from mmtune.config import MEDIA_KINDS

DESCRIPTION = ("Instruction tuning of language models, text-only and multimodal, from one YAML file: build data "
               "shards, train a recipe, chat with and export the result, or run the built-in demo.")


def _train(args) -> int:
    from mmtune.recipe import load_recipe
    from mmtune.train.trainer import train

    cfg = load_recipe(args.config, args.overrides)
    if args.nproc > 1 and "WORLD_SIZE" not in os.environ:
        return _spawn(args)
    summary = train(cfg, resume=args.resume if args.resume is not None else False)
    print(f"loss curve: {summary['loss_curve']}\ncheckpoint: {summary['checkpoint']}")
    return 0


def _spawn(args) -> int:
    """`--nproc N`: the same command under torchrun with N processes on this machine (see docs/distributed.md)."""
    import subprocess

    resume = [] if args.resume is None else ["--resume", args.resume]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(args.nproc),
           "-m", "mmtune.cli", "train", args.config, *args.overrides, *resume]
    return subprocess.call(cmd)


def _chat(args) -> int:
    from mmtune.infer.chat import answer_file, interactive, open_chat, say

    if args.input and (args.prompt is not None or any(getattr(args, kind) for kind in MEDIA_KINDS)):
        raise UserError("--input: give prompts and images in the file, not with --prompt/--image/--video/--points")
    if bool(args.input) != bool(args.output):
        raise UserError("--input and --output go together (a JSONL file of prompts in, one of answers out)")
    if args.batch_size < 1:
        raise UserError(f"--batch-size: must be at least 1, got {args.batch_size}")
    chat = open_chat(args.ckpt, args.max_new_tokens)
    if args.input:
        n = answer_file(chat, Path(args.input), Path(args.output), args.batch_size)
        print(f"{n} answers: {args.output}")
        return 0
    for kind in MEDIA_KINDS:
        for path in getattr(args, kind) or []:
            chat.attach(kind, path, f"--{kind}")
    if args.prompt is not None:
        say(chat, args.prompt)
    else:
        interactive(chat)
    return 0


def _build_data(args) -> int:
    from data_builders.cli import run

    return run(args)


def _export(args) -> int:
    from mmtune.infer.export import run

    return run(args)


def _eval(args) -> int:
    from mmtune.eval.run import run

    return run(args)


def _edit(args) -> int:
    from mmtune.infer.edit import run

    return run(args)


def _demo(args) -> int:
    from mmtune.demo import main

    return main(args)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="mmtune", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)
    t = sub.add_parser("train", help="train from a YAML recipe")
    t.add_argument("config", help="recipe YAML (see configs/)")
    t.add_argument("overrides", nargs="*", help="section.key=value overrides, e.g. train.lr=1e-4")
    t.add_argument("--resume", nargs="?", const="latest", default=None,
                   help="resume from the newest checkpoint of train.out_dir (or from the given checkpoint)")
    t.add_argument("--nproc", type=int, default=1,
                   help="start this many processes on this machine through torchrun (train.engine must be ddp, "
                        "fsdp or deepspeed)")
    t.set_defaults(func=_train)
    b = sub.add_parser("build-data", help="convert a data set into canonical WebDataset shards")
    from data_builders.cli import add_arguments

    add_arguments(b)
    b.set_defaults(func=_build_data)
    c = sub.add_parser("chat", help="talk to a trained checkpoint")
    c.add_argument("--ckpt", required=True, help="checkpoint directory or run directory (newest checkpoint)")
    c.add_argument("--prompt", help="one-shot prompt; without it (and --input), an interactive session")
    for kind in MEDIA_KINDS:
        c.add_argument(f"--{kind}", action="append", help=f"{kind} file for the first turn (repeatable)")
    c.add_argument("--input", help='batch mode: JSONL of {"prompt": ..., "images": [paths relative to the file]}')
    c.add_argument("--output", help="batch mode: JSONL written with each input record and its answer")
    c.add_argument("--batch-size", type=int, default=8, help="batch mode: prompts generated together")
    c.add_argument("--max-new-tokens", type=int, default=128)
    c.set_defaults(func=_chat)
    e = sub.add_parser("export", help="export a checkpoint as a Hugging Face model (hf) or LLaVA (llava) directory")
    from mmtune.infer.export import add_arguments as export_arguments

    export_arguments(e)
    e.set_defaults(func=_export)
    v = sub.add_parser("eval", help="score a checkpoint (vqa, choice, rouge, loss) or dump MT-bench answers")
    from mmtune.eval.run import add_arguments as eval_arguments

    eval_arguments(v)
    v.set_defaults(func=_eval)
    ed = sub.add_parser("edit", help="edit an image with a trained image editor (InstructPix2Pix)")
    from mmtune.infer.edit import add_arguments as edit_arguments

    edit_arguments(ed)
    ed.set_defaults(func=_edit)
    d = sub.add_parser("demo", help="the built-in vision-language demo: synthetic shapes, train, held-out accuracy")
    from mmtune.demo import add_arguments as demo_arguments

    demo_arguments(d)
    d.set_defaults(func=_demo)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    args = parser().parse_args(argv)
    try:
        return args.func(args)
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
