"""What a run leaves for people to look at: metrics.jsonl, samples.jsonl (data order), train.log, loss_curve.png.

On resume, lines past the checkpoint's step are dropped first, so the files read as one uninterrupted run.
"""
from __future__ import annotations

import json
from pathlib import Path

from tqdm import tqdm


class RunLog:
    """`active=False` (every rank but the main one) writes nothing, so N processes leave one set of files."""

    def __init__(self, run_dir: Path, resume_step: int | None, active: bool = True):
        self.run_dir, self.active = run_dir, active
        self.metrics = run_dir / "metrics.jsonl"
        self.samples = run_dir / "samples.jsonl"
        self.text = run_dir / "train.log"
        if not active:
            return
        for path in (self.metrics, self.samples):
            if resume_step is None:
                path.write_text("")
            elif path.exists():
                kept = [l for l in path.read_text().splitlines() if json.loads(l).get("step", 0) <= resume_step]
                path.write_text("".join(l + "\n" for l in kept))
        if resume_step is None:
            self.text.write_text("")

    def _append(self, path: Path, record: dict) -> None:
        if not self.active:
            return
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metric(self, record: dict) -> None:
        self._append(self.metrics, record)

    def data_order(self, step: int, sample_ids: list[str]) -> None:
        self._append(self.samples, {"step": step, "ids": sample_ids})

    def say(self, line: str) -> None:
        if not self.active:
            return
        tqdm.write(line)
        with open(self.text, "a") as f:
            f.write(line + "\n")

    def plot(self) -> Path:
        """Train (and eval) loss against step, as loss_curve.png."""
        out = self.run_dir / "loss_curve.png"
        if not self.active:
            return out
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        records = [json.loads(l) for l in self.metrics.read_text().splitlines()]
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
        fig, ax = plt.subplots(figsize=(6, 4))
        if train:
            ax.plot(*zip(*train), label="train loss")
        if evals:
            ax.plot(*zip(*evals), "o-", label="eval loss")
        ax.set_xlabel("step")
        ax.set_ylabel("loss (per supervised token)")
        ax.set_title(self.run_dir.name)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.savefig(out, dpi=100, bbox_inches="tight")
        plt.close(fig)
        return out
