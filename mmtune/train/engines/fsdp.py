"""FSDP2 (`torch.distributed.fsdp.fully_shard`): parameters, gradients and optimizer state sharded across ranks.

Each decoder layer is its own FSDP unit (the classes the LLM lists in `_no_split_modules`); the rest (embeddings,
LM head, encoder, bridge) is the root unit. Checkpoints: the optimizer and trainable weights sharded with
torch.distributed.checkpoint in `sharded/` (exact resume), plus the usual consolidated model.safetensors and peft
`adapter/`, gathered tensor by tensor (only the weights a checkpoint keeps), so `mmtune chat/export` read it as is.
"""
from __future__ import annotations

import contextlib
from pathlib import Path

import torch

from mmtune.train.engine import Engine, trainable


def decoder_layers(model) -> list[torch.nn.Module]:
    llm = model.llm.get_base_model() if hasattr(model.llm, "get_base_model") else model.llm
    names = set(getattr(llm, "_no_split_modules", None) or ())
    return [m for m in model.modules() if type(m).__name__ in names]


class FSDPEngine(Engine):
    name = "fsdp"
    fused_optimizer = False
    known_args = ("reshard_after_forward", "cpu_offload")
    """reshard_after_forward (default true: ZeRO-3-like; false: ZeRO-2-like), cpu_offload (params and optimizer)."""

    def wrap(self, model, make_optimizer):
        from torch.distributed.fsdp import CPUOffloadPolicy, fully_shard

        model.to(self.device)
        model.media_pass_always = True
        model.head_whole_after_forward = False
        options = {"reshard_after_forward": bool(self.args.get("reshard_after_forward", True))}
        if self.args.get("cpu_offload"):
            options["offload_policy"] = CPUOffloadPolicy()
        for layer in decoder_layers(model):
            fully_shard(layer, **options)
        fully_shard(model, **options)
        self.optimizer = make_optimizer(trainable(model))
        return model

    @contextlib.contextmanager
    def micro_batch(self, module, last: bool):
        module.set_requires_gradient_sync(last)
        yield

    def clip_grad_norm(self, max_norm: float) -> float:
        from torch.distributed.tensor import DTensor

        params = [p for group in self.optimizer.param_groups for p in group["params"]]
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm if max_norm > 0 else float("inf"))
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)

    @contextlib.contextmanager
    def inference(self, module):
        """Generation calls the embedding and the LLM directly: gather the root unit's weights for the while."""
        module.unshard()
        try:
            yield
        finally:
            module.reshard()

    def full_weights(self, model) -> dict[str, torch.Tensor]:
        from torch.distributed.tensor import DTensor

        from mmtune.models.build import names_to_save

        state, out = model.state_dict(), {}
        for name in names_to_save(model):  # the same order on every rank: each full_tensor() is a collective
            t = state[name]
            t = t.full_tensor() if isinstance(t, DTensor) else t
            if self.is_main:
                out[name] = t.detach().cpu().contiguous()
        return out

    def _sharded(self, model):
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict

        options = StateDictOptions(ignore_frozen_params=True)
        model_state, optim_state = get_state_dict(model, self.optimizer, options=options)
        return {"model": model_state, "optimizer": optim_state}, options

    def save_optimizer(self, ckpt: Path, model) -> None:
        import torch.distributed.checkpoint as dcp

        dcp.save(self._sharded(model)[0], checkpoint_id=ckpt / "sharded")

    def load_state(self, ckpt: Path, model) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        state, options = self._sharded(model)
        dcp.load(state, checkpoint_id=ckpt / "sharded")
        set_state_dict(model, self.optimizer, model_state_dict=state["model"], optim_state_dict=state["optimizer"],
                       options=options)


ENGINE = FSDPEngine
