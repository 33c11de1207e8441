"""Pins the learning-rate schedule: linear warm-up that never starts at 0, cosine decay, floor at min_lr_ratio."""
import pytest
import torch

from mmtune.config import TrainConfig
from mmtune.train.schedule import cosine_with_warmup


def lr_used_at_each_step(cfg: TrainConfig, extra_steps: int = 0) -> list[float]:
    """The learning rate each optimizer step runs with, driven as the trainer drives it (step, then schedule)."""
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=cfg.lr)
    scheduler = cosine_with_warmup(optimizer, cfg)
    used = []
    for _ in range(cfg.steps + extra_steps):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return used


def test_warmup_then_cosine_to_the_floor():
    # 4 warm-up steps, then 12 decay steps; cos(pi/3) = 0.5, cos(pi/2) = 0, cos(2pi/3) = -0.5.
    used = lr_used_at_each_step(TrainConfig(lr=0.5, warmup=4, steps=16, min_lr_ratio=0.1), extra_steps=4)
    expected_factors = {0: 0.2, 1: 0.4, 2: 0.6, 3: 0.8,  # (step + 1) / (warmup + 1): the first step already learns
                        4: 1.0,  # the peak, right after warm-up
                        8: 0.1 + 0.9 * 0.75, 10: 0.1 + 0.9 * 0.5, 12: 0.1 + 0.9 * 0.25,
                        15: 0.1 + 0.9 * 0.5 * (1 - (6 ** 0.5 + 2 ** 0.5) / 4),  # cos(11pi/12): the run's last step
                        16: 0.1, 19: 0.1}  # past the last step the rate stays at the floor
    assert {step: used[step] for step in expected_factors} == pytest.approx(
        {step: 0.5 * factor for step, factor in expected_factors.items()}, rel=1e-12)
    assert all(a >= b for a, b in zip(used[4:], used[5:]))  # never rises again after the peak


def test_no_warmup_starts_at_the_peak_and_a_zero_floor_ends_at_zero():
    used = lr_used_at_each_step(TrainConfig(lr=1e-3, warmup=0, steps=4, min_lr_ratio=0.0), extra_steps=1)
    assert used == pytest.approx([1e-3, 1e-3 * 0.5 * (1 + 0.5 ** 0.5), 1e-3 * 0.5, 1e-3 * 0.5 * (1 - 0.5 ** 0.5), 0.0],
                                 rel=1e-12, abs=1e-18)
