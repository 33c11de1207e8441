"""The edit demo at reduced size: held-out edit PSNR must rise above the untrained model's; the unchanged-input
baseline is reported next to it (the full recipe beats it, see README), and the grid and the `mmtune edit` line work."""
import argparse
import json
import re
import shlex

import pytest
from PIL import Image

from mmtune.cli import main as cli
from mmtune.demo import add_arguments, main

pytestmark = pytest.mark.slow
pytest.importorskip("diffusers")


def test_edit_demo_learns_to_edit(tmp_path, capsys):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--task", "edit", "--out", str(tmp_path), "--train-samples", "600", "--eval-samples",
                              "12", "train.steps=150", "train.eval_every=150", "train.save_every=150",
                              "train.batch_size=16", "train.log_every=50"])
    assert main(args) == 0
    out = capsys.readouterr().out
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    untrained, trained = [r for r in records if "edit_psnr" in r]
    assert trained["edit_psnr"] > untrained["edit_psnr"] + 3, (untrained, trained)
    assert untrained["edit_psnr_identity"] == trained["edit_psnr_identity"]  # the same held-out edits
    assert (f"{untrained['edit_psnr']:.2f} dB untrained -> {trained['edit_psnr']:.2f} dB trained; input unchanged: "
            f"{trained['edit_psnr_identity']:.2f} dB") in out
    grid = Image.open(re.search(r"before/after grid: (\S+)", out).group(1))
    assert grid.height > grid.width  # 8 rows (two edits of each kind) of 4 images
    command, arguments = re.search(r"try it: (.+)", out).group(1).split(" edit ", 1)
    assert cli(["edit", *shlex.split(arguments)]) == 0
    assert Image.open(tmp_path / "edited.png").size == (32, 32)
