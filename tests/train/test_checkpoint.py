"""Pins checkpoint bookkeeping: `keep_last` keeps exactly the newest checkpoints (by step number), and a checkpoint
whose write was interrupted (`.tmp-step-*`) is never listed or resumed from."""
import pytest
import torch
from torch import nn

from mmtune.config import ComponentConfig, RunConfig
from mmtune.train import checkpoint
from mmtune.train.engine import build_engine


class TinyModel(nn.Module):
    """What checkpoint.save reads from a model: its trainable weights and an `llm` part (here without LoRA)."""

    def __init__(self):
        super().__init__()
        self.llm = nn.Linear(2, 2)


def save_steps(run_dir, steps, keep_last):
    model = TinyModel()
    engine = build_engine(ComponentConfig("single"), RunConfig().train)
    engine.wrap(model, lambda params: torch.optim.SGD(params, lr=0.1))
    scheduler = torch.optim.lr_scheduler.LambdaLR(engine.optimizer, lambda _: 1.0)
    state = {"data": {}, "counts": {}}
    for step in steps:
        checkpoint.save(run_dir, step, engine, model, scheduler, {"step": step, **state}, RunConfig(), keep_last)


def names(paths):
    return [p.name for p in paths]


@pytest.mark.parametrize("keep_last", [1, 2, 5])
def test_keep_last_leaves_exactly_the_newest(tmp_path, keep_last):
    save_steps(tmp_path, range(1, 6), keep_last)
    newest = [f"step-{step:06d}" for step in range(6 - keep_last, 6)]
    assert names(checkpoint.list_checkpoints(tmp_path)) == newest
    assert sorted(p.name for p in (tmp_path / "checkpoints").iterdir()) == newest


def test_checkpoints_are_ordered_by_step_not_by_name(tmp_path):
    save_steps(tmp_path, [999_998, 999_999, 1_000_000], keep_last=2)  # "step-1000000" sorts before "step-999999"
    assert names(checkpoint.list_checkpoints(tmp_path)) == ["step-999999", "step-1000000"]
    assert checkpoint.find("latest", tmp_path).name == "step-1000000"


def test_an_interrupted_save_is_never_listed_or_resumed(tmp_path, monkeypatch):
    save_steps(tmp_path, [1, 2], keep_last=5)

    def disk_full(cfg, path):
        raise OSError("No space left on device")

    monkeypatch.setattr(checkpoint, "save_config", disk_full)
    with pytest.raises(OSError, match="No space left on device"):
        save_steps(tmp_path, [3], keep_last=5)
    assert (tmp_path / "checkpoints" / ".tmp-step-000003" / "model.safetensors").is_file()
    assert names(checkpoint.list_checkpoints(tmp_path)) == ["step-000001", "step-000002"]
    assert checkpoint.find(True, tmp_path).name == "step-000002"
