"""The seam between the one training loop and what runs it: one process, torch DDP, FSDP2 or DeepSpeed ZeRO.

The loop calls only what is here: wrap the model and optimizer, backward, a context for each micro-batch of an
accumulation step (no gradient sync before the last), step (clip, skip non-finite steps on every rank together),
sums and gathers across ranks, barrier, and saving/loading the model and optimizer state of a checkpoint.
`Engine` is the single-process behaviour; each engine in engines/ overrides what differs. Engines are chosen by
`train.engine.name` and imported lazily (DeepSpeed is an optional extra).
"""
from __future__ import annotations

import contextlib
import importlib
import math
import os
from pathlib import Path

import torch

from mmtune.config import ComponentConfig
from mmtune.errors import ConfigError

ENGINES = {"single": "mmtune.train.engines.single", "ddp": "mmtune.train.engines.ddp",
           "fsdp": "mmtune.train.engines.fsdp", "deepspeed": "mmtune.train.engines.deepspeed"}


def build_engine(cfg: ComponentConfig, train_cfg) -> "Engine":
    name = cfg.name or "single"
    if name not in ENGINES:
        raise ConfigError(f"train.engine.name: unknown engine {name!r}; known: {sorted(ENGINES)}")
    return importlib.import_module(ENGINES[name]).ENGINE(dict(cfg.args), train_cfg)


def process_env() -> tuple[int, int, int]:
    """(rank, world size, local rank) as set by torchrun, the deepspeed launcher or SLURM+torchrun."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def local_device() -> torch.device:
    """This process's device: its GPU (`cuda:LOCAL_RANK`) where there is one, else the CPU."""
    return torch.device(f"cuda:{process_env()[2]}") if torch.cuda.is_available() else torch.device("cpu")


def trainable(model: torch.nn.Module) -> list[torch.nn.Parameter]:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("tuning: every part is frozen, nothing to train (set tuning.llm/bridge to lora or full)")
    return params


class Engine:
    """One process. Distributed engines inherit the collectives below, which work on any world size."""
    name = "single"
    known_args: tuple[str, ...] = ()
    fused_optimizer = True
    """AdamW as one fused kernel over all tensors (SmolLM2-135M, one CPU thread: 0.07 s a step against 0.30 for
    torch's per-tensor loop on CPU). Engines whose optimizer sees sharded or flattened tensors keep the loop."""

    def __init__(self, args: dict, train_cfg):
        unknown = sorted(set(args) - set(self.known_args))
        if unknown:
            raise ConfigError(f"train.engine.args: unknown key(s) {unknown} for engine {self.name!r}; "
                              f"known: {list(self.known_args) or 'none'}")
        self.args, self.train_cfg = args, train_cfg
        self.rank, self.world, self.local_rank = process_env()
        self.optimizer: torch.optim.Optimizer | None = None
        if self.world > 1:
            self._init_process_group()

    def _init_process_group(self) -> None:
        import torch.distributed as dist

        if self.name == "single":
            raise ConfigError(f"train.engine.name=single, but {self.world} processes were launched; "
                              "choose ddp, fsdp or deepspeed (see docs/distributed.md)")
        if not dist.is_initialized():
            if torch.cuda.is_available():
                torch.cuda.set_device(self.local_rank)
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def device(self) -> torch.device:
        return local_device()

    # -- model and optimizer ------------------------------------------------------------------------------------
    def wrap(self, model: torch.nn.Module, make_optimizer) -> torch.nn.Module:
        """Place the model and build the optimizer (`make_optimizer(params)`); returns the module the loop calls."""
        model.to(self.device)
        self.optimizer = make_optimizer(trainable(model))
        return model

    def micro_batch(self, module, last: bool):
        """Context for one micro-batch's forward and backward; distributed engines sync gradients on the last."""
        return contextlib.nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        if loss.requires_grad:  # else the batch used no trainable weight (text only, frozen LLM): no gradient
            loss.backward()

    def clip_grad_norm(self, max_norm: float) -> float:
        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        return float(torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf")))

    def step(self, max_norm: float, loss_finite: bool) -> tuple[float, bool]:
        """Clip, then step unless the loss or gradient norm is non-finite on any rank; returns (norm, stepped)."""
        grad_norm = self.clip_grad_norm(max_norm)
        stepped = self.all_true(loss_finite and math.isfinite(grad_norm))
        if stepped:
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm, stepped

    def inference(self, module):
        """Context for eval and generation, which call the model's parts directly rather than its forward."""
        return contextlib.nullcontext()

    # -- collectives --------------------------------------------------------------------------------------------
    def sum(self, values: list[float]) -> list[float]:
        if self.world == 1:
            return list(values)
        import torch.distributed as dist

        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        dist.all_reduce(t)
        return t.tolist()

    def all_true(self, flag: bool) -> bool:
        return self.sum([0.0 if flag else 1.0])[0] == 0

    def gather(self, obj) -> list:
        """Every rank's `obj`, in rank order, on every rank."""
        if self.world == 1:
            return [obj]
        import torch.distributed as dist

        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()

    # -- checkpoints ---------------------------------------------------------------------------------------------
    def full_weights(self, model) -> dict[str, torch.Tensor]:
        """The weights a checkpoint keeps (see models.build.weights_to_save), whole, on the main rank."""
        from mmtune.models.build import weights_to_save

        return weights_to_save(model)

    def save_state(self, ckpt: Path, model) -> None:
        """Write model weights (and the adapter) from the main rank, then the optimizer state into the checkpoint
        directory."""
        from mmtune.train.checkpoint import write_weights

        weights = self.full_weights(model)
        if self.is_main:
            write_weights(ckpt, model, weights)
        self.save_optimizer(ckpt, model)

    def save_optimizer(self, ckpt: Path, model) -> None:
        """The optimizer state as this engine resumes it: one file from the main rank here; sharded engines write
        their own formats from every rank."""
        if self.is_main:
            torch.save(self.optimizer.state_dict(), ckpt / "optimizer.pt")

    def load_state(self, ckpt: Path, model) -> None:
        from mmtune.models.build import load_weights

        load_weights(model, ckpt)
        self.optimizer.load_state_dict(torch.load(ckpt / "optimizer.pt", weights_only=True))
