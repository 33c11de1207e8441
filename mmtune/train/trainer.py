"""The one training loop, for every recipe. It reads top to bottom: batch -> objective -> backward, and at each
accumulation boundary: scale by supervised tokens, guard non-finite values, clip, step, schedule, log, evaluate,
checkpoint. It knows nothing of modalities (models/, data/) or loss details (models/objectives.py).
"""
from __future__ import annotations

import contextlib
import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mmtune.config import RunConfig, save_config
from mmtune.data.packing import Batcher, DataState, padding_fraction
from mmtune.data.pipeline import SampleEncoder, iterate_batches, sample_encoder
from mmtune.data.shards import count_samples, expand_shards
from mmtune.errors import ConfigError, TrainingError
from mmtune.eval.loss import mean_loss
from mmtune.models.objectives import get_objective
from mmtune.train import checkpoint
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


def make_batches(cfg: RunConfig, shards: list[str], encoder: SampleEncoder, pad_id: int, state: DataState,
                 *, train: bool):
    d = cfg.data
    batcher = Batcher(cfg.train.batch_size, d.max_len, packing=d.packing and not encoder.seq2seq,
                      group_by_length=d.group_by_length, on_error=d.on_error, seed=cfg.train.seed)
    it = iterate_batches(shards, encoder, batcher, pad_id, state, seed=cfg.train.seed, shuffle=d.shuffle and train,
                         shuffle_buffer=d.shuffle_buffer, num_workers=d.num_workers, epochs=None if train else 1)
    return it, batcher


def steps_for_epochs(cfg: RunConfig, shards: list[str], encoder: SampleEncoder, pad_id: int) -> int:
    """`train.epochs` as optimizer steps: samples / (batch x accumulation), or with packing the packed batches of
    the first epoch (packing decides how many samples a row holds), rounded up."""
    if cfg.data.packing and not encoder.seq2seq:
        batches, _ = make_batches(cfg, shards, encoder, pad_id, DataState(), train=False)
        per_epoch = sum(1 for _ in tqdm(batches, desc="counting packed batches for train.epochs", leave=False))
    else:
        per_epoch = math.ceil(count_samples(shards) / cfg.train.batch_size)
    return max(1, math.ceil(cfg.train.epochs * per_epoch / cfg.train.grad_accum))


def to_device(batch: dict, dev: torch.device) -> dict:
    return {k: v.to(dev) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def evaluate(model, cfg: RunConfig, shards: list[str], encoder: SampleEncoder, pad_id: int) -> float:
    """Mean loss per supervised token over the first `train.eval_batches` batches of the held-out shards."""
    batches, _ = make_batches(cfg, shards, encoder, pad_id, DataState(), train=False)
    model.eval()
    result = mean_loss(model, batches, get_objective(cfg.train.objective), sparse=cfg.train.sparse_lm_head,
                       max_batches=cfg.train.eval_batches, precision=lambda: autocast(cfg))
    model.train()
    return result["loss"]


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


@dataclass
class Run:
    """Everything the loop touches, built once by `setup`."""
    cfg: RunConfig
    model: torch.nn.Module
    tokenizer: object
    params: list
    optimizer: torch.optim.Optimizer
    scheduler: object
    state: dict
    log: RunLog
    batches: object
    batcher: Batcher
    encoder: SampleEncoder
    pad_id: int
    eval_shards: list[str]
    callbacks: list
    resumed_from: Path | None


def setup(cfg: RunConfig, resume: str | bool, callbacks: list) -> Run:
    """Shards, model, optimizer, schedule; then the checkpoint to resume from, if any."""
    from mmtune.models.build import build_model

    run_dir = Path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.data.train:
        raise ConfigError("data.train: no shards given (build some with `mmtune build-data`)")
    train_shards = expand_shards(cfg.data.train, "data.train")
    eval_shards = expand_shards(cfg.data.eval, "data.eval") if cfg.data.eval else []
    model, tokenizer = build_model(cfg)
    model.to(device())
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ConfigError("tuning: every part is frozen, nothing to train (set tuning.llm/bridge to lora or full)")
    encoder = sample_encoder(cfg, model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if cfg.train.epochs:  # before the schedule, which is laid out over train.steps
        cfg.train.steps = steps_for_epochs(cfg, train_shards, encoder, pad_id)
    optimizer = torch.optim.AdamW(params, lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    scheduler = cosine_with_warmup(optimizer, cfg.train)
    state = {"step": 0, "data": asdict(DataState()), "counts": {}, "bad_steps": 0, "tokens": 0, "samples": 0}
    ckpt = checkpoint.find(resume, run_dir)
    if ckpt is not None:
        state = checkpoint.load(ckpt, model, optimizer, scheduler)
    save_config(cfg, run_dir / "config.yaml")
    log = RunLog(run_dir, resume_step=state["step"] if ckpt is not None else None)
    batches, batcher = make_batches(cfg, train_shards, encoder, pad_id, DataState(**state["data"]), train=True)
    batcher.counts.update(state["counts"])
    return Run(cfg, model, tokenizer, params, optimizer, scheduler, state, log, batches, batcher, encoder, pad_id,
               eval_shards, callbacks, ckpt)


def announce(run: Run) -> None:
    trainable = sum(p.numel() for p in run.params)
    total = sum(p.numel() for p in run.model.parameters())
    where = f"resumed from {run.resumed_from}" if run.resumed_from else f"run dir {run.cfg.train.out_dir}"
    run.log.say(f"mmtune: {run.cfg.model.llm} | trainable {trainable:,} / {total:,} params | {where}")
    if run.cfg.train.epochs:
        run.log.say(f"train.epochs={run.cfg.train.epochs:g}: {run.cfg.train.steps} optimizer steps")
    if run.cfg.train.precision == "bf16" and (ratio := slow_cpu_bf16()) > 1.5:
        run.log.say(f"warning: bf16 matmul is {ratio:.0f}x slower than fp32 on this CPU and torch build; "
                    "train.precision=fp32 will be faster here")


def run_eval(run: Run, step: int) -> None:
    """Held-out loss, sample generations and callbacks' metrics, as one metrics.jsonl record."""
    record = {"step": step}
    if run.eval_shards:
        record["eval_loss"] = evaluate(run.model, run.cfg, run.eval_shards, run.encoder, run.pad_id)
        run.log.say(f"step {step}: eval loss {record['eval_loss']:.4f}")
    if run.cfg.train.sample_prompts:
        record["generations"] = sample_generations(run.model, run.tokenizer, run.cfg, run.log, step)
    for cb in run.callbacks:
        record.update(cb("eval", step=step, model=run.model, tokenizer=run.tokenizer, log=run.log) or {})
    if len(record) > 1:
        run.log.metric(record)


def train_step(run: Run) -> dict:
    """One optimizer step over `grad_accum` micro-batches; returns what the log records."""
    t, state = run.cfg.train, run.state
    objective = get_objective(t.objective)
    run.optimizer.zero_grad(set_to_none=True)
    loss_sum, count, ids, pad, tokens = 0.0, 0, [], 0.0, 0
    for _ in range(t.grad_accum):
        batch, data_state = next(run.batches)
        batch = to_device(batch, device())
        with autocast(run.cfg):
            out = objective(run.model, batch, sparse=t.sparse_lm_head)
        out.loss_sum.backward()
        loss_sum, count = loss_sum + float(out.loss_sum.detach()), count + out.count
        ids += batch["sample_ids"]
        pad += padding_fraction(batch) / t.grad_accum
        tokens += int((batch["seq_ids"] >= 0).sum())
    state["step"] += 1
    for p in run.params:  # weight by supervised tokens across the whole accumulation step
        if p.grad is not None:
            p.grad.div_(max(count, 1))
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, t.clip if t.clip > 0 else float("inf")))
    loss = loss_sum / max(count, 1)
    if math.isfinite(loss) and math.isfinite(grad_norm):
        run.optimizer.step()
    else:
        skip_non_finite(run, loss, grad_norm)
    run.scheduler.step()
    state["data"] = asdict(data_state)
    state["samples"] += len(ids)
    state["tokens"] += count
    state["counts"] = dict(run.batcher.counts)
    run.log.data_order(state["step"], ids)
    return {"step": state["step"], "loss": loss, "lr": run.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
            "supervised_tokens": count, "tokens": tokens, "padding": pad, "bad_steps": state["bad_steps"],
            **state["counts"]}


def skip_non_finite(run: Run, loss: float, grad_norm: float) -> None:
    """A NaN/inf step changes no weight; too many of them end the run with advice."""
    run.state["bad_steps"] += 1
    bad, limit = run.state["bad_steps"], run.cfg.train.max_bad_steps
    run.log.say(f"step {run.state['step']}: non-finite loss/grad ({loss}, {grad_norm}); skipped ({bad} so far)")
    if bad > limit:
        raise TrainingError(f"{bad} non-finite steps exceed train.max_bad_steps={limit}; "
                            "lower train.lr or use train.precision=fp32")


def train(cfg: RunConfig, resume: str | bool = False, callbacks: list | None = None) -> dict:
    """Train `cfg`; `resume` is False, True/"latest" (newest checkpoint in out_dir, if any) or a checkpoint path.
    `callbacks` are called as cb(event, **info) at "eval" and "end" (the demo uses this for accuracy)."""
    run = setup(cfg, resume, callbacks or [])
    t, log = cfg.train, run.log
    announce(run)
    if run.resumed_from is None:
        run_eval(run, 0)
    run.model.train()
    with tqdm(total=t.steps, initial=run.state["step"], desc="train", dynamic_ncols=True) as bar:
        started, tokens = time.perf_counter(), 0
        while run.state["step"] < t.steps:
            record = train_step(run)
            step, tokens = record["step"], tokens + record.pop("tokens")
            bar.update(1)
            bar.set_postfix(loss=f"{record['loss']:.3f}")
            if step % t.log_every == 0 or step == 1 or step == t.steps:
                log.metric({**record, "tokens_per_s": tokens / max(time.perf_counter() - started, 1e-9)})
                started, tokens = time.perf_counter(), 0
            if step % t.eval_every == 0 or step == t.steps:
                run_eval(run, step)
                log.plot()
            if step % t.save_every == 0 or step == t.steps:
                checkpoint.save(Path(t.out_dir), step, run.model, run.optimizer, run.scheduler, run.state, cfg,
                                t.keep_last)
    return finish(run)


def describe_counts(counts: dict) -> str:
    """The end-of-run line about samples that did not train as written (truncated, or skipped and why)."""
    if not counts:
        return "every sample trained whole (none truncated or skipped)"
    return ", ".join(f"{name.replace('_', ' ', 1)} {n}" for name, n in sorted(counts.items()))


def finish(run: Run) -> dict:
    curve = run.log.plot()
    summary = {"run_dir": run.cfg.train.out_dir, "step": run.state["step"], "loss_curve": str(curve),
               "checkpoint": str(checkpoint.list_checkpoints(Path(run.cfg.train.out_dir))[-1]),
               "counts": run.state["counts"]}
    for cb in run.callbacks:
        summary.update(cb("end", step=run.state["step"], model=run.model, tokenizer=run.tokenizer, log=run.log) or {})
    run.log.say(f"done: {run.state['step']} steps; loss curve {curve}; checkpoint {summary['checkpoint']}")
    run.log.say(f"data: {describe_counts(run.state['counts'])}")
    return summary
