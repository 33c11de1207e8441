"""What a run leaves for people to look at: metrics.jsonl, samples.jsonl (data order), train.log, loss_curve.png,
and the same metrics in the trackers of train.report_to (TensorBoard event files in the run dir, wandb).

On resume, lines (and TensorBoard events) past the checkpoint's step are dropped first, so the files read as one
uninterrupted run.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from tqdm import tqdm


class RunLog:
    """`active=False` (every rank but the main one) writes nothing, so N processes leave one set of files."""

    def __init__(self, run_dir: Path, resume_step: int | None, active: bool = True, report_to: list[str] = (),
                 config: dict | None = None):
        self.run_dir, self.active = run_dir, active
        self.metrics = run_dir / "metrics.jsonl"
        self.samples = run_dir / "samples.jsonl"
        self.text = run_dir / "train.log"
        self.trackers = []
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
        self.trackers = [TRACKERS[name](run_dir, resume_step, config or {}) for name in report_to]

    def _append(self, path: Path, record: dict) -> None:
        if not self.active:
            return
        with open(path, "a") as f:
            f.write(json.dumps(record) + "\n")

    def metric(self, record: dict) -> None:
        """One metrics.jsonl line; trackers get its numbers as scalars and its generations as text."""
        self._append(self.metrics, record)
        scalars = {k: v for k, v in record.items()
                   if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)}
        for tracker in self.trackers:
            tracker.scalars(record["step"], scalars)
            if record.get("generations"):
                tracker.generations(record["step"], record["generations"])

    def close(self) -> None:
        for tracker in self.trackers:
            tracker.close()

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
        from matplotlib.figure import Figure  # no pyplot: a notebook's inline backend stays as it is

        records = [json.loads(l) for l in self.metrics.read_text().splitlines()]
        train = [(r["step"], r["loss"]) for r in records if "loss" in r]
        evals = [(r["step"], r["eval_loss"]) for r in records if "eval_loss" in r]
        fig = Figure(figsize=(6, 4))
        ax = fig.subplots()
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
        return out


class TensorBoardTracker:
    """Event files next to metrics.jsonl, so `tensorboard --logdir runs/` shows each run dir as one run."""

    def __init__(self, run_dir: Path, resume_step: int | None, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        if resume_step is None:  # a fresh run replaces the old one's events, as it does metrics.jsonl
            for old in run_dir.glob("events.out.tfevents.*"):
                old.unlink()
        self.writer = SummaryWriter(str(run_dir), purge_step=None if resume_step is None else resume_step + 1)
        self.writer.add_text("config", "```json\n" + json.dumps(config, indent=2) + "\n```", 0)

    def scalars(self, step: int, values: dict) -> None:
        for name, value in values.items():
            self.writer.add_scalar(name, value, step)
        self.writer.flush()  # a run that dies still shows everything logged so far

    def generations(self, step: int, samples: list[dict]) -> None:
        cell = lambda text: text.replace("|", "\\|").replace("\n", " ")
        rows = "".join(f"| {cell(s['prompt'])} | {cell(s['answer'])} |\n" for s in samples)
        self.writer.add_text("generations", "| prompt | answer |\n|---|---|\n" + rows, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """Weights & Biases, offline unless WANDB_MODE says otherwise (`wandb sync` uploads an offline run later)."""

    def __init__(self, run_dir: Path, resume_step: int | None, config: dict):
        os.environ.setdefault("WANDB_MODE", "offline")
        import wandb

        self.wandb = wandb
        self.run = wandb.init(dir=str(run_dir), name=run_dir.name, config=config,
                              project=os.environ.get("WANDB_PROJECT", "mmtune"))

    def scalars(self, step: int, values: dict) -> None:
        self.run.log(values, step=step)

    def generations(self, step: int, samples: list[dict]) -> None:
        table = self.wandb.Table(columns=["prompt", "answer"], data=[[s["prompt"], s["answer"]] for s in samples])
        self.run.log({"generations": table}, step=step)

    def close(self) -> None:
        self.run.finish()


TRACKERS = {"tensorboard": TensorBoardTracker, "wandb": WandbTracker}
"""train.report_to names -> tracker classes (imported lazily: each loads its package only when used)."""
