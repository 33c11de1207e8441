"""The built-in demos at reduced size: held-out accuracy must rise well above chance (the full image run reaches
0.96), and the `mmtune chat` line each prints works."""
import argparse
import json
import re
import shlex
import shutil

import pytest

from data_builders.synth import points
from data_builders.synth.shapes import ANSWERS, COLORS
from mmtune.cli import main as cli
from mmtune.data.stream import ShardStream
from mmtune.demo import TASKS, add_arguments, main

pytestmark = pytest.mark.slow
SHAPE_ANSWERS = {a for answers in ANSWERS.values() for a in answers}


def test_demo_learns_to_see(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--train-samples", "2000", "--eval-samples", "80",
                              "train.steps=300", "train.eval_every=300", "train.save_every=300"])
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "held-out accuracy:" in out and "loss_curve.png" in out
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    accuracy = [r["accuracy"] for r in records if "accuracy" in r]
    assert accuracy[0] < 0.3 and accuracy[-1] > 0.45, accuracy  # chance is ~0.25
    assert (tmp_path / "run" / "loss_curve.png").is_file()
    try_it = next(line for line in out.splitlines() if line.startswith("try it: "))
    command, arguments = try_it.removeprefix("try it: ").split(" chat ", 1)
    assert shutil.which(shlex.split(command)[0]), f"{command!r} is not a command this shell can run"
    assert cli(["chat", *shlex.split(arguments)]) == 0
    assert capsys.readouterr().out.strip() in SHAPE_ANSWERS


REDUCED = {  # task -> (arguments, what the answers may be)
    "image-qformer": (["--train-samples", "4000", "--eval-samples", "60", "train.steps=400"], SHAPE_ANSWERS),
    "points": (["--train-samples", "1500", "--eval-samples", "60", "train.steps=250"], set(points.CLASSES)),
    "multi-image": (["--train-samples", "6000", "--eval-samples", "60", "train.steps=300"], set(COLORS)),
    "video": (["--train-samples", "4000", "--eval-samples", "60", "train.steps=300"], set(COLORS)),
}


@pytest.mark.parametrize("task", sorted(REDUCED))
def test_each_media_demo_learns_well_above_chance(tmp_path, capsys, task):
    """Each task at reduced size: held-out accuracy from nothing to at least chance plus a third of the way to
    perfect, and its `mmtune chat` line answers with one of the task's answers. A single-turn task trains on one
    question a sample without `--single-turn`."""
    argv, answers = REDUCED[task]
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    steps = next(a for a in argv if a.startswith("train.steps=")).split("=")[1]
    args = parser.parse_args(["--task", task, "--out", str(tmp_path), *argv, f"train.eval_every={steps}",
                              f"train.save_every={steps}"])
    assert main(args) == 0
    if TASKS[task].single_turn:
        train = ShardStream(sorted(map(str, (tmp_path / "data").glob("train-*.tar"))), lambda s: s, shuffle=False)
        assert {len(item.value.messages) for item in train} == {2}  # one question and its answer
    out = capsys.readouterr().out
    before, after, chance = map(float, re.search(r"held-out accuracy: ([\d.]+) before -> ([\d.]+) after training "
                                                 r"\(chance ([\d.]+)\)", out).groups())
    assert before < chance < 0.34 and after > chance + (1 - chance) / 3, out
    try_it = next(line for line in out.splitlines() if line.startswith("try it: "))
    assert cli(["chat", *shlex.split(try_it.split(" chat ", 1)[1])]) == 0
    assert capsys.readouterr().out.strip() in answers
