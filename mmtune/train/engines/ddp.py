"""torch DistributedDataParallel: every rank holds the whole model; gradients are averaged in backward, once per
accumulation step (no_sync before the last micro-batch). The main rank writes the checkpoint's weights."""
from __future__ import annotations

import contextlib

import torch

from mmtune.train.engine import Engine, trainable


class DDPEngine(Engine):
    name = "ddp"
    known_args = ("bucket_cap_mb", "find_unused_parameters", "gradient_as_bucket_view", "static_graph")
    """Passed to torch.nn.parallel.DistributedDataParallel as they are."""

    def wrap(self, model, make_optimizer):
        from torch.nn.parallel import DistributedDataParallel

        model.to(self.device)
        model.media_pass_always = True
        self.optimizer = make_optimizer(trainable(model))
        if self.world == 1:
            return model
        device_ids = [self.local_rank] if torch.cuda.is_available() else None
        return DistributedDataParallel(model, device_ids=device_ids, **self.args)

    def micro_batch(self, module, last: bool):
        return module.no_sync() if not last and hasattr(module, "no_sync") else contextlib.nullcontext()


ENGINE = DDPEngine
