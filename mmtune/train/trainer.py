"""The one training loop, for every recipe. It reads top to bottom: batch -> objective -> backward, and at each
accumulation boundary: scale by supervised tokens, guard non-finite values, clip, step, schedule, log, evaluate,
checkpoint. It knows nothing of modalities (models/, data/) or loss details (objectives.py).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from mmtune.config import RunConfig, save_config
from mmtune.data.packing import Batcher, DataState, padding_fraction
from mmtune.data.pipeline import SampleEncoder, iterate_batches
from mmtune.data.shards import expand_shards
from mmtune.errors import ConfigError, TrainingError
from mmtune.train import checkpoint
from mmtune.train.objectives import get_objective
from mmtune.train.runlog import RunLog
from mmtune.train.schedule import cosine_with_warmup


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def slow_cpu_bf16() -> float:
    """How many times slower a bf16 matmul is than fp32 here (0 on GPU). Some CPU/torch builds lack bf16 GEMM
    kernels (measured: torch 2.14.1+cu130 on an AVX-512 CPU runs bf16 ~25x slower), so autocast would hurt."""
    if device().type != "cpu":
        return 0.0

    def timed(dtype):
        a = torch.randn(256, 256, dtype=dtype)
        a @ a
        start = time.perf_counter()
        for _ in range(4):
            a @ a
        return time.perf_counter() - start

    return timed(torch.bfloat16) / timed(torch.float32)


def autocast(cfg: RunConfig):
    if cfg.train.precision == "bf16":
        return torch.autocast(device().type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def sample_encoder(cfg: RunConfig, model, tokenizer) -> SampleEncoder:
    return SampleEncoder(tokenizer=tokenizer, template=cfg.data.template, max_len=cfg.data.max_len,
                         system_prompt=cfg.data.system_prompt, media_tokens=model.media_tokens,
                         image_transform=model.encoder.transform if model.encoder is not None else None,
                         overlong=cfg.data.overlong, seq2seq=model.seq2seq)


def make_batches(cfg: RunConfig, shards: list[str], encoder: SampleEncoder, pad_id: int, state: DataState,
                 *, train: bool):
    d = cfg.data
    batcher = Batcher(cfg.train.batch_size, d.max_len, packing=d.packing and not encoder.seq2seq,
                      group_by_length=d.group_by_length, on_error=d.on_error, seed=cfg.train.seed)
    it = iterate_batches(shards, encoder, batcher, pad_id, state, seed=cfg.train.seed, shuffle=d.shuffle and train,
                         shuffle_buffer=d.shuffle_buffer, num_workers=d.num_workers, epochs=None if train else 1)
    return it, batcher


def to_device(batch: dict, dev: torch.device) -> dict:
    return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


@torch.no_grad()
def evaluate(model, cfg: RunConfig, shards: list[str], encoder: SampleEncoder, pad_id: int) -> float:
    """Mean loss per supervised token over the first `train.eval_batches` batches of the held-out shards."""
    objective = get_objective(cfg.train.objective)
    batches, _ = make_batches(cfg, shards, encoder, pad_id, DataState(), train=False)
    model.eval()
    total, count = 0.0, 0
    for i, (batch, _) in enumerate(batches):
        if i >= cfg.train.eval_batches:
            break
        with autocast(cfg):
            out = objective(model, to_device(batch, device()), sparse=cfg.train.sparse_lm_head)
        total, count = total + float(out.loss_sum), count + out.count
    model.train()
    return total / max(count, 1)


def sample_generations(model, tokenizer, cfg: RunConfig, log: RunLog, step: int) -> list[dict]:
    """Greedy answers to `train.sample_prompts`, written to the log so progress can be read, not only plotted."""
    from mmtune.data.sample import Message
    from mmtune.infer.generate import generate

    was_training = model.training
    model.eval()
    answers = generate(model, tokenizer, cfg, [[Message("user", p)] for p in cfg.train.sample_prompts],
                       max_new_tokens=48)
    model.train(was_training)
    for prompt, answer in zip(cfg.train.sample_prompts, answers):
        log.say(f"step {step}: sample | {prompt!r} -> {answer!r}")
    return [{"prompt": p, "answer": a} for p, a in zip(cfg.train.sample_prompts, answers)]


def train(cfg: RunConfig, resume: str | bool = False, callbacks: list | None = None) -> dict:
    """Train `cfg`; `resume` is False, True/"latest" (newest checkpoint in out_dir, if any) or a checkpoint path.
    `callbacks` are called as cb(event, **info) at "eval" and "end" (the demo uses this for accuracy)."""
    from mmtune.models.build import build_model

    t = cfg.train
    run_dir = Path(t.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    train_shards = expand_shards(cfg.data.train, "data.train") if cfg.data.train else []
    if not train_shards:
        raise ConfigError("data.train: no shards given (build some with `mmtune build-data`)")
    eval_shards = expand_shards(cfg.data.eval, "data.eval") if cfg.data.eval else []

    model, tokenizer = build_model(cfg)
    dev = device()
    model.to(dev)
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("tuning: every part is frozen, nothing to train (set tuning.llm/bridge to lora or full)")
    optimizer = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    scheduler = cosine_with_warmup(optimizer, t)
    state = {"step": 0, "data": asdict(DataState()), "counts": {}, "bad_steps": 0, "tokens": 0, "samples": 0}
    ckpt = checkpoint.find(resume, run_dir)
    if ckpt is not None:
        state = checkpoint.load(ckpt, model, optimizer, scheduler)
    save_config(cfg, run_dir / "config.yaml")
    log = RunLog(run_dir, resume_step=state["step"] if ckpt is not None else None)
    trainable = sum(p.numel() for p in params)
    total = sum(p.numel() for p in model.parameters())
    log.say(f"mmtune: {cfg.model.llm} | trainable {trainable:,} / {total:,} params | "
            + (f"resumed from {ckpt}" if ckpt else f"run dir {run_dir}"))

    if t.precision == "bf16" and (ratio := slow_cpu_bf16()) > 1.5:
        log.say(f"warning: bf16 matmul is {ratio:.0f}x slower than fp32 on this CPU and torch build; "
                "train.precision=fp32 will be faster here")
    encoder = sample_encoder(cfg, model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    batches, batcher = make_batches(cfg, train_shards, encoder, pad_id, DataState(**state["data"]), train=True)
    batcher.counts.update(state["counts"])
    objective = get_objective(t.objective)
    callbacks = callbacks or []

    def run_eval(step: int) -> None:
        record = {"step": step}
        if eval_shards:
            record["eval_loss"] = evaluate(model, cfg, eval_shards, encoder, pad_id)
            log.say(f"step {step}: eval loss {record['eval_loss']:.4f}")
        if t.sample_prompts:
            record["generations"] = sample_generations(model, tokenizer, cfg, log, step)
        for cb in callbacks:
            record.update(cb("eval", step=step, model=model, tokenizer=tokenizer, log=log) or {})
        if len(record) > 1:
            log.metric(record)

    if ckpt is None:
        run_eval(0)
    model.train()
    with tqdm(total=t.steps, initial=state["step"], desc="train", dynamic_ncols=True) as bar:
        started, window_tokens = time.perf_counter(), 0
        while state["step"] < t.steps:
            optimizer.zero_grad(set_to_none=True)
            loss_sum, count, ids, pad = 0.0, 0, [], 0.0
            for _ in range(t.grad_accum):
                batch, data_state = next(batches)
                batch = to_device(batch, dev)
                with autocast(cfg):
                    out = objective(model, batch, sparse=t.sparse_lm_head)
                out.loss_sum.backward()
                loss_sum, count = loss_sum + float(out.loss_sum.detach()), count + out.count
                ids += batch["sample_ids"]
                pad += padding_fraction(batch) / t.grad_accum
                window_tokens += int((batch["seq_ids"] >= 0).sum())
            state["step"] += 1
            step = state["step"]
            for p in params:  # weight by supervised tokens across the whole accumulation step
                if p.grad is not None:
                    p.grad.div_(max(count, 1))
            grad_norm = float(torch.nn.utils.clip_grad_norm_(params, t.clip if t.clip > 0 else float("inf")))
            loss = loss_sum / max(count, 1)
            if math.isfinite(loss) and math.isfinite(grad_norm):
                optimizer.step()
            else:
                state["bad_steps"] += 1
                log.say(f"step {step}: non-finite loss/grad ({loss}, {grad_norm}); skipped ({state['bad_steps']} so far)")
                if state["bad_steps"] > t.max_bad_steps:
                    raise TrainingError(f"{state['bad_steps']} non-finite steps exceed train.max_bad_steps="
                                        f"{t.max_bad_steps}; lower train.lr or use train.precision=fp32")
            scheduler.step()
            state["data"] = asdict(data_state)
            state["samples"] += len(ids)
            state["tokens"] += count
            state["counts"] = dict(batcher.counts)
            log.data_order(step, ids)
            bar.update(1)
            bar.set_postfix(loss=f"{loss:.3f}")
            if step % t.log_every == 0 or step == 1 or step == t.steps:
                elapsed = time.perf_counter() - started
                log.metric({"step": step, "loss": loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                            "supervised_tokens": count, "tokens_per_s": window_tokens / max(elapsed, 1e-9),
                            "padding": pad, "bad_steps": state["bad_steps"], **state["counts"]})
                started, window_tokens = time.perf_counter(), 0
            if step % t.eval_every == 0 or step == t.steps:
                run_eval(step)
                log.plot()
            if step % t.save_every == 0 or step == t.steps:
                checkpoint.save(run_dir, step, model, optimizer, scheduler, state, cfg, t.keep_last)
    curve = log.plot()
    summary = {"run_dir": str(run_dir), "step": state["step"], "checkpoint": str(checkpoint.list_checkpoints(run_dir)[-1]),
               "loss_curve": str(curve), "counts": state["counts"]}
    for cb in callbacks:
        summary.update(cb("end", step=state["step"], model=model, tokenizer=tokenizer, log=log) or {})
    log.say(f"done: {state['step']} steps; loss curve {curve}; checkpoint {summary['checkpoint']}")
    return summary
