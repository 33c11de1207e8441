"""Exact resume: a run killed with SIGKILL and resumed gives the same loss at every step, the same samples in the
same order and the same counts of truncated and skipped samples as the uninterrupted run."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from tests.helpers import write_text_shards

pytestmark = pytest.mark.slow

RECIPE = {
    "model": {"llm": "tiny:llama"},
    "tuning": {"llm": "lora", "lora": {"r": 4, "alpha": 8, "dropout": 0.1}},  # dropout: the RNG must resume too
    # max_len 40 truncates some samples and leaves others with no answer (counted); the kill lands inside a
    # length-grouping window (16 batches), whose items are read again on resume and must not be counted twice
    "data": {"template": "chatml", "max_len": 40, "shuffle_buffer": 16, "num_workers": 2, "on_error": "skip"},
    "train": {"steps": 14, "batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup": 2, "log_every": 1,
              "save_every": 1, "keep_last": 2, "eval_every": 1000},
}


def _run(config: Path, *extra: str, kill_at_step: int | None = None) -> None:
    cmd = [sys.executable, "-m", "mmtune.cli", "train", str(config), *extra]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_at_step is None:
        assert proc.wait(timeout=300) == 0, proc.stderr.read()
        return
    marker = Path(yaml.safe_load(config.read_text())["train"]["out_dir"]) / "checkpoints" / f"step-{kill_at_step:06d}"
    deadline = time.time() + 300
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def _history(run_dir: Path):
    losses = {r["step"]: r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines())
              if "loss" in r}
    order = [r["ids"] for r in map(json.loads, (run_dir / "samples.jsonl").read_text().splitlines())]
    counts = {r["step"]: {k: v for k, v in r.items() if k.startswith(("skipped_", "truncated"))}
              for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r}
    return losses, order, counts


def test_sigkill_and_resume_matches_uninterrupted_run(tmp_path):
    shards = write_text_shards(tmp_path / "data", 60, shard_size=9)

    def config(name: str) -> Path:
        recipe = {**RECIPE, "data": {**RECIPE["data"], "train": shards},
                  "train": {**RECIPE["train"], "out_dir": str(tmp_path / name)}}
        path = tmp_path / f"{name}.yaml"
        path.write_text(yaml.safe_dump(recipe))
        return path

    _run(config("full"))
    _run(config("killed"), kill_at_step=5)
    assert not (tmp_path / "killed" / "checkpoints" / "step-000014").exists()
    _run(config("killed"), "--resume")
    full_loss, full_order, full_counts = _history(tmp_path / "full")
    resumed_loss, resumed_order, resumed_counts = _history(tmp_path / "killed")
    assert sorted(full_loss) == list(range(1, 15))
    assert resumed_loss == full_loss  # bit-identical, every step
    assert resumed_order == full_order
    assert full_counts[14]["truncated"] > 0 and full_counts[14]["skipped_no_target"] > 0, full_counts[14]
    assert resumed_counts == full_counts  # every counter, at every step
    ids = [i for step in full_order for i in step]
    assert len(ids) > 40 and len(set(ids[:40])) == 40  # no repeats within the first epoch (60 samples, some skipped)
