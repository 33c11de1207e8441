"""`mmtune build-data` arguments and output, driven through add_arguments / run as the main CLI does."""
from __future__ import annotations

import argparse

import pytest

from data_builders import cli
from mmtune.errors import ConfigError, DataError
from tests.helpers import SAMPLES


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="mmtune build-data")
    cli.add_arguments(parser)
    return parser.parse_args(argv)


def test_build_llava_demo_with_eval_split(tmp_path, capsys, read_shards):
    # Two of its records take LLaVA's demo images from ../images, which only the opt-in flag allows.
    args = parse(["llava", "--input", str(SAMPLES / "multimodal" / "llava_demo.json"), "--out", str(tmp_path),
                  "--eval-fraction", "0.5", "--seed", "3", "--shard-size", "2", "--allow-outside-media"])
    assert cli.run(args) == 0
    out, err = capsys.readouterr()
    train, held_out = read_shards(tmp_path), read_shards(tmp_path, "eval")
    assert len(train) + len(held_out) == 6 and held_out
    shards = len(list(tmp_path.glob("*.tar")))
    assert shards >= 3  # at most 2 samples per shard
    assert out.startswith(f"llava: 6 records -> {len(train)} train + {len(held_out)} eval samples, 0 records "
                          f"skipped, {shards} shards in {tmp_path} (")
    assert "build-data llava" in err  # the progress bar


def test_media_outside_the_image_folder_is_refused_without_the_flag(tmp_path):
    input_path = SAMPLES / "multimodal" / "llava_demo.json"
    with pytest.raises(DataError, match=rf"llava_demo\.json record 4 \(line \d+\) id 'llava_example_ironing' field "
                                        r"image: media path '\.\./images/extreme_ironing\.jpg' is outside the image "
                                        r"folder .*--allow-outside-media"):
        cli.run(parse(["llava", "--input", str(input_path), "--out", str(tmp_path)]))
    assert list(tmp_path.glob("*.tar")) == []


def test_skips_are_listed_before_the_summary(write_json, tmp_path, capsys):
    path = write_json("s.json", [{"conversations": [{"from": "human", "value": "q"}, {"from": "gpt", "value": "a"}]},
                                 {"conversations": [{"from": "alien", "value": "q"}]}])
    assert cli.run(parse(["sharegpt", "--input", str(path), "--out", str(tmp_path / "o"), "--on-error", "skip"])) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith(f"skipped 1 record(s) for unknown_role; first: {path} record 1 (line ")
    assert lines[1].startswith("sharegpt: 2 records -> 1 train + 0 eval samples, 1 records skipped")


def test_oasst_all_paths_and_limit(write_json, tmp_path, capsys):
    replies = [{"message_id": m, "text": m, "role": "assistant", "rank": r} for r, m in enumerate(["a", "b"])]
    trees = [{"message_tree_id": f"t{i}", "prompt": {"text": "q", "role": "prompter", "replies": replies}}
             for i in range(3)]
    path = write_json("o.jsonl", trees, lines=True)
    assert cli.run(parse(["oasst", "--input", str(path), "--out", str(tmp_path / "o"), "--all-paths",
                          "--limit", "2"])) == 0
    assert capsys.readouterr().out.startswith("oasst: 2 records -> 4 train + 0 eval samples")


def test_all_paths_is_refused_for_other_builders(write_json, tmp_path):
    path = write_json("a.json", [{"instruction": "q", "output": "a"}])
    with pytest.raises(ConfigError, match=r"builder 'alpaca' has no option 'all_paths'"):
        cli.run(parse(["alpaca", "--input", str(path), "--out", str(tmp_path / "o"), "--all-paths"]))


def test_unknown_builder_is_an_argparse_error(capsys):
    with pytest.raises(SystemExit):
        parse(["dolly", "--input", "x", "--out", "y"])
    assert "invalid choice: 'dolly'" in capsys.readouterr().err
