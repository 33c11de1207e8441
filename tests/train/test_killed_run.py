"""A run killed with SIGKILL mid-training leaves no process behind: its DataLoader workers die with it (text and
image runs, two workers each)."""
import sys
import time
from pathlib import Path

import pytest

from mmtune.config import save_config
from tests.helpers import PROMPTLY_S, VLM, ProcessTree, tiny_config, write_image_shards, write_text_shards

pytestmark = pytest.mark.slow


def _logged_a_step(metrics: Path) -> bool:
    """Whether the run has logged a training loss (the record at step 0 comes before any batch). Read as text: the
    last line may be half written."""
    return metrics.is_file() and '"loss":' in metrics.read_text()


@pytest.mark.parametrize("modality", ["text", "image"])
def test_sigkilled_run_leaves_no_worker_behind(tmp_path, modality):
    write = write_image_shards if modality == "image" else write_text_shards
    # Far more samples than the batcher reads ahead, so the workers are mid-epoch at the kill.
    cfg = tiny_config(tmp_path / "run", write(tmp_path / "data", 256), "train.steps=10000", "train.log_every=1",
                      "data.num_workers=2", *(VLM if modality == "image" else []))
    save_config(cfg, tmp_path / "recipe.yaml")
    metrics = tmp_path / "run" / "metrics.jsonl"
    cmd = [sys.executable, "-m", "mmtune.cli", "train", str(tmp_path / "recipe.yaml")]
    with open(tmp_path / "stderr.txt", "w") as stderr, ProcessTree(cmd, stderr=stderr) as tree:
        deadline = time.monotonic() + 300
        while not _logged_a_step(metrics):
            assert tree.proc.poll() is None and time.monotonic() < deadline, (tmp_path / "stderr.txt").read_text()
            time.sleep(0.05)
        assert len(tree.alive()) == 3  # the trainer and its two workers
        assert tree.kill_root(PROMPTLY_S) == []
