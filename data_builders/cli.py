"""`mmtune build-data NAME --input FILE --out DIR ...`: the argument parser and runner the main CLI calls."""
from __future__ import annotations

import argparse

from data_builders import BUILDERS
from data_builders.build import ON_ERROR, build


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", choices=sorted(BUILDERS), help="source format")
    parser.add_argument("--input", required=True, help="a JSON array or JSON Lines file (.gz allowed)")
    parser.add_argument("--out", required=True, help="folder for train-*.tar / eval-*.tar; must hold no shards yet")
    parser.add_argument("--image-folder", help="folder media paths are relative to (default: the input's folder)")
    parser.add_argument("--allow-outside-media", action="store_true",
                        help="read media paths that lead outside the image folder ('..', absolute paths, symlinks "
                             "out of it); by default such a record is an error, or skipped under --on-error skip. "
                             "Only for trusted data")
    parser.add_argument("--on-error", choices=ON_ERROR, default="raise",
                        help="a bad record stops the build (raise) or is left out and counted (skip)")
    parser.add_argument("--eval-fraction", type=float, default=0.0, help="share of records held out for eval")
    parser.add_argument("--shard-size", type=int, default=1000, help="samples per shard")
    parser.add_argument("--seed", type=int, default=0, help="seed of the train/eval split")
    parser.add_argument("--all-paths", action="store_true", help="oasst: every root-to-leaf thread, not the best")
    parser.add_argument("--limit", type=int, help="read only the first N records")


def run(args: argparse.Namespace) -> int:
    """Build the shards and print a summary; DataError / ConfigError propagate for the main CLI to print."""
    options = {"all_paths": True} if args.all_paths else {}
    report = build(args.name, args.input, args.out, image_folder=args.image_folder, on_error=args.on_error,
                   eval_fraction=args.eval_fraction, seed=args.seed, shard_size=args.shard_size, limit=args.limit,
                   allow_outside_media=args.allow_outside_media, progress=True, **options)
    for line in report.skip_lines():
        print(line)
    print(report.summary())
    return 0
