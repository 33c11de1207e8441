"""DeepSpeed ZeRO stages 0-3 (optional CPU offload of optimizer state and parameters), driven by the same loop.

The DeepSpeed JSON is generated from the YAML (`train.engine.args: {stage: 2}`), or read from a file
(`args: {config: ds.json}`) whose batch, accumulation and clipping keys must agree with the YAML (or be "auto").
Accumulation is the loop's: DeepSpeed runs with managed_gradient_accumulation=false, so every `step()` is the
boundary. Checkpoints: DeepSpeed's own (partitioned) files in `deepspeed/` for exact resume, plus model.safetensors
and the peft `adapter/` from only the weights a checkpoint keeps, gathered whole under ZeRO-3 (a ZeRO-3 LoRA
adapter is complete, not the empty partitions that `save_pretrained` sees).
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch

from mmtune.errors import ConfigError
from mmtune.train.engine import Engine, trainable


class DeepSpeedEngine(Engine):
    name = "deepspeed"
    fused_optimizer = False
    known_args = ("stage", "offload_optimizer", "offload_params", "config")

    def _init_process_group(self) -> None:
        import deepspeed

        deepspeed.init_distributed(dist_backend="nccl" if torch.cuda.is_available() else "gloo")

    def ds_config(self) -> dict:
        t = self.train_cfg
        ours = {"train_micro_batch_size_per_gpu": t.batch_size, "gradient_accumulation_steps": t.grad_accum,
                "train_batch_size": t.batch_size * t.grad_accum * self.world, "gradient_clipping": t.clip,
                "managed_gradient_accumulation": False}
        if "config" in self.args:
            path = Path(self.args["config"])
            if not path.is_file():
                raise ConfigError(f"train.engine.args.config: DeepSpeed config {path} not found")
            config = json.loads(path.read_text())
            for key, value in ours.items():
                if config.get(key, "auto") not in ("auto", value):
                    raise ConfigError(f"{path}: {key}={config[key]!r} disagrees with the YAML ({value!r}); "
                                      f"remove it or set it to \"auto\"")
            return {**config, **ours}
        zero = {"stage": int(self.args.get("stage", 2))}
        if zero["stage"] not in (0, 1, 2, 3):
            raise ConfigError(f"train.engine.args.stage must be 0, 1, 2 or 3, got {zero['stage']}")
        if self.args.get("offload_optimizer"):
            zero["offload_optimizer"] = {"device": "cpu"}
        if self.args.get("offload_params"):
            if zero["stage"] != 3:
                raise ConfigError("train.engine.args.offload_params needs stage 3")
            zero["offload_param"] = {"device": "cpu"}
        return {**ours, "zero_optimization": zero, "bf16": {"enabled": t.precision == "bf16"},
                "steps_per_print": 1 << 30, "wall_clock_breakdown": False}

    @property
    def stage(self) -> int:
        return self.ds.zero_optimization_stage()

    def wrap(self, model, make_optimizer):
        import deepspeed

        model.to(self.device)
        model.media_pass_always = True
        self.optimizer = make_optimizer(trainable(model))  # the schedule drives its param groups under ZeRO too
        self.ds, _, _, _ = deepspeed.initialize(model=model, optimizer=self.optimizer, config=self.ds_config())
        model.head_whole_after_forward = self.stage < 3
        return self.ds

    def backward(self, loss: torch.Tensor) -> None:
        self.ds.backward(loss, scale_wrt_gas=False)

    def step(self, max_norm: float, loss_finite: bool) -> tuple[float, bool]:
        """ZeRO 1-3 skip a step with a non-finite gradient norm themselves (the norm is global); stage 0 has no
        such check, so its local gradients are checked on every rank first."""
        finite = self.all_true(loss_finite)
        if self.stage == 0 and not self.all_true(finite and self._local_grads_finite()):
            self.ds.zero_grad()
            return float("nan"), False
        self.ds.step()
        norm = self.ds.get_global_grad_norm()
        norm = float(norm) if norm is not None else float("nan")
        return norm, finite and self.ds.was_step_applied() and math.isfinite(norm)

    def _local_grads_finite(self) -> bool:
        return all(bool(torch.isfinite(p.grad).all()) for p in self.ds.module.parameters() if p.grad is not None)

    def full_weights(self, model) -> dict[str, torch.Tensor]:
        import deepspeed

        from mmtune.models.build import names_to_save

        tensors = model.state_dict(keep_vars=True)
        names = names_to_save(model)
        params = [tensors[n] for n in names if isinstance(tensors[n], torch.nn.Parameter)]
        with deepspeed.zero.GatheredParameters(params):  # ZeRO-3: these tensors whole on every rank; else a no-op
            return {n: tensors[n].detach().cpu().clone() for n in names} if self.is_main else {}

    def save_optimizer(self, ckpt: Path, model) -> None:
        self.ds.save_checkpoint(str(ckpt / "deepspeed"), tag="state", exclude_frozen_parameters=True)

    def load_state(self, ckpt: Path, model) -> None:
        path, _ = self.ds.load_checkpoint(str(ckpt / "deepspeed"), tag="state", load_module_strict=False,
                                          load_lr_scheduler_states=False)
        if path is None:
            raise ConfigError(f"--resume: {ckpt} holds no DeepSpeed state (was it written by another engine?)")


ENGINE = DeepSpeedEngine
