"""The one training loop, for every recipe and every engine. It reads top to bottom: batches -> global count
(what the objective normalises by) -> objective -> backward (scaled by that count), and at each accumulation
boundary: clip, step unless non-finite on any rank, schedule, log, evaluate, checkpoint. It knows nothing of model
kinds and modalities (models/kinds.py, data/), loss details (models/objectives.py) or how processes cooperate
(engine.py).
"""
from __future__ import annotations

import contextlib
import math
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from mmtune.config import RunConfig, save_config
from mmtune.data.packing import Batcher, DataState, padding_fraction, to_device
from mmtune.data.pipeline import SampleEncoder, iterate_batches
from mmtune.data.shards import count_samples, expand_shards
from mmtune.errors import ConfigError, TrainingError
from mmtune.eval.loss import mean_loss
from mmtune.models.kinds import get_kind, sample_encoder
from mmtune.models.objectives import Objective, build_objective
from mmtune.train import checkpoint
from mmtune.train.engine import Engine, build_engine, local_device
from mmtune.train.host_memory import freed_memory, policy_for
from mmtune.train.runlog import RunLog
from mmtune.train.schedule import cosine_with_warmup


def slow_cpu_bf16() -> float:
    """How many times slower a bf16 matmul is than fp32 here (0 on GPU). Some CPU/torch builds lack bf16 GEMM
    kernels (measured: torch 2.14.1+cu130 on an AVX-512 CPU runs bf16 ~25x slower), so autocast would hurt."""
    if local_device().type != "cpu":
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
        return torch.autocast(local_device().type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def make_batches(cfg: RunConfig, shards: list[str], encoder: SampleEncoder, pad_id: int, state: DataState,
                 *, train: bool, rank: int = 0, world: int = 1):
    d = cfg.data
    batcher = Batcher(cfg.train.batch_size, d.max_len, packing=d.packing and encoder.packable,
                      group_by_length=d.group_by_length, on_error=d.on_error, seed=cfg.train.seed)
    it = iterate_batches(shards, encoder, batcher, pad_id, state, seed=cfg.train.seed, shuffle=d.shuffle and train,
                         shuffle_buffer=d.shuffle_buffer, num_workers=d.num_workers, epochs=None if train else 1,
                         rank=rank, world=world)
    return it, batcher


def steps_for_epochs(cfg: RunConfig, shards: list[str], encoder: SampleEncoder, pad_id: int, world: int) -> int:
    """`train.epochs` as optimizer steps: samples / (batch x processes x accumulation), or with packing the packed
    batches of one rank's first epoch (packing decides how many samples a row holds), rounded up."""
    if cfg.data.packing and encoder.packable:
        batches, _ = make_batches(cfg, shards, encoder, pad_id, DataState(), train=False, world=world)
        per_epoch = sum(1 for _ in tqdm(batches, desc="counting packed batches for train.epochs", leave=False))
    else:
        per_epoch = math.ceil(count_samples(shards) / (cfg.train.batch_size * world))
    return max(1, math.ceil(cfg.train.epochs * per_epoch / cfg.train.grad_accum))


def evaluate(model, objective: Objective, cfg: RunConfig, shards: list[str], encoder: SampleEncoder,
             pad_id: int) -> float:
    """Mean loss per counted unit (supervised token, image) over the first `train.eval_batches` held-out batches."""
    batches, _ = make_batches(cfg, shards, encoder, pad_id, DataState(), train=False)
    model.eval()
    result = mean_loss(model, batches, objective, max_batches=cfg.train.eval_batches,
                       precision=lambda: autocast(cfg))
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
    module: torch.nn.Module
    """What the engine made of `model` for the training forward pass (e.g. the DDP or DeepSpeed wrapper)."""
    engine: Engine
    objective: Objective
    tokenizer: object
    sizes: tuple[int, int]
    """(trainable, total) parameters, counted before any sharding."""
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
    """Engine, shards, model, optimizer, schedule; then the checkpoint to resume from, if any."""
    engine = build_engine(cfg.train.engine, cfg.train)
    run_dir = Path(cfg.train.out_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    if not cfg.data.train:
        raise ConfigError("data.train: no shards given (build some with `mmtune build-data`)")
    train_shards = expand_shards(cfg.data.train, "data.train")
    eval_shards = expand_shards(cfg.data.eval, "data.eval") if cfg.data.eval else []
    model, tokenizer = get_kind(cfg.model.kind).build(cfg)
    sizes = (sum(p.numel() for p in model.parameters() if p.requires_grad), sum(p.numel() for p in model.parameters()))
    encoder = sample_encoder(cfg, model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    if cfg.train.epochs:  # before the schedule, which is laid out over train.steps
        cfg.train.steps = steps_for_epochs(cfg, train_shards, encoder, pad_id, engine.world)
    objective = build_objective(cfg, model)
    module = engine.wrap(model, lambda params: torch.optim.AdamW(params, lr=cfg.train.lr,
                                                                 weight_decay=cfg.train.weight_decay,
                                                                 fused=engine.fused_optimizer))
    optimizer = engine.optimizer
    scheduler = cosine_with_warmup(optimizer, cfg.train)
    state = {"step": 0, "data": asdict(DataState()), "counts": {}, "bad_steps": 0, "tokens": 0, "samples": 0}
    ckpt = checkpoint.find(resume, run_dir)
    if ckpt is not None:
        state = checkpoint.load(ckpt, engine, model, scheduler)
    if engine.is_main:
        save_config(cfg, run_dir / "config.yaml")
    log = RunLog(run_dir, resume_step=state["step"] if ckpt is not None else None, active=engine.is_main,
                 report_to=cfg.train.report_to, config=asdict(cfg))
    batches, batcher = make_batches(cfg, train_shards, encoder, pad_id, DataState(**state["data"]), train=True,
                                    rank=engine.rank, world=engine.world)
    batcher.counts.update(state["counts"])
    return Run(cfg, model, module, engine, objective, tokenizer, sizes, optimizer, scheduler, state, log, batches,
               batcher, encoder, pad_id, eval_shards, callbacks, ckpt)


def announce(run: Run) -> None:
    trainable, total = run.sizes
    where = f"resumed from {run.resumed_from}" if run.resumed_from else f"run dir {run.cfg.train.out_dir}"
    engine = f" | {run.engine.name} x {run.engine.world}" if run.engine.world > 1 else ""
    name = get_kind(run.cfg.model.kind).describe(run.cfg)
    run.log.say(f"mmtune: {name} | trainable {trainable:,} / {total:,} params | {where}{engine}")
    if run.cfg.train.epochs:
        run.log.say(f"train.epochs={run.cfg.train.epochs:g}: {run.cfg.train.steps} optimizer steps")
    if run.cfg.train.precision == "bf16" and (ratio := slow_cpu_bf16()) > 1.5:
        run.log.say(f"warning: bf16 matmul is {ratio:.0f}x slower than fp32 on this CPU and torch build; "
                    "train.precision=fp32 will be faster here")


def run_eval(run: Run, step: int) -> None:
    """Held-out loss, sample generations and callbacks' metrics, as one metrics.jsonl record. Every rank evaluates
    the same batches (sharded engines need every rank in each forward pass); the main rank writes."""
    with run.engine.inference(run.model):
        _eval_record(run, step)


def _eval_record(run: Run, step: int) -> None:
    record = {"step": step}
    if run.eval_shards:
        record["eval_loss"] = evaluate(run.model, run.objective, run.cfg, run.eval_shards, run.encoder, run.pad_id)
        run.log.say(f"step {step}: eval loss {record['eval_loss']:.4f}")
    if run.cfg.train.sample_prompts:
        record["generations"] = sample_generations(run.model, run.tokenizer, run.cfg, run.log, step)
    for cb in run.callbacks:
        record.update(cb("eval", step=step, model=run.model, tokenizer=run.tokenizer, log=run.log) or {})
    if len(record) > 1:
        run.log.metric(record)


def train_step(run: Run) -> dict:
    """One optimizer step over `grad_accum` micro-batches on every rank; returns what the log records."""
    t, state, engine = run.cfg.train, run.state, run.engine
    micro = [next(run.batches) for _ in range(t.grad_accum)]
    # Weight by the objective's count (supervised tokens, images) across the whole accumulation step and every
    # rank (engines average over ranks).
    count = int(engine.sum([sum(run.objective.count(batch) for batch, _ in micro)])[0])
    scale = engine.world / max(count, 1)
    loss_sum, ids, pad, tokens = 0.0, [], 0.0, 0
    for i, (batch, data_state) in enumerate(micro):
        batch = to_device(batch, engine.device)
        with engine.micro_batch(run.module, last=i == t.grad_accum - 1):
            with autocast(run.cfg):
                out = run.objective(run.module, batch)
            engine.backward(out.loss_sum * scale)
        loss_sum += float(out.loss_sum.detach())
        ids += batch["sample_ids"]
        pad += padding_fraction(batch) / t.grad_accum
        tokens += int((batch["seq_ids"] >= 0).sum())
    loss_sum, tokens, pad = engine.sum([loss_sum, tokens, pad])
    state["step"] += 1
    loss = loss_sum / max(count, 1)
    grad_norm, stepped = engine.step(t.clip, math.isfinite(loss))
    if not stepped:
        skip_non_finite(run, loss, grad_norm)
    run.scheduler.step()
    state["data"] = asdict(data_state)
    state["counts"] = dict(run.batcher.counts)
    gathered = engine.gather((ids, state["counts"]))
    ids = [sample_id for rank_ids, _ in gathered for sample_id in rank_ids]
    counts = sum((Counter(rank_counts) for _, rank_counts in gathered), Counter())
    state["samples"] += len(ids)
    state["tokens"] += count
    run.log.data_order(state["step"], ids)
    return {"step": state["step"], "loss": loss, "lr": run.scheduler.get_last_lr()[0], "grad_norm": grad_norm,
            run.objective.unit: count, "tokens": int(tokens), "padding": pad / engine.world,
            "bad_steps": state["bad_steps"], **counts}


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
    with freed_memory(policy_for(local_device().type, cfg.train.activation_checkpointing)):
        return _train(cfg, resume, callbacks or [])


def _train(cfg: RunConfig, resume: str | bool, callbacks: list) -> dict:
    run = setup(cfg, resume, callbacks)
    t, log = cfg.train, run.log
    announce(run)
    if run.resumed_from is None:
        run_eval(run, 0)
    run.model.train()
    with tqdm(total=t.steps, initial=run.state["step"], desc="train", dynamic_ncols=True,
              disable=not run.engine.is_main) as bar:
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
                checkpoint.save(Path(t.out_dir), step, run.engine, run.model, run.scheduler, run.state, cfg,
                                t.keep_last)
    summary = finish(run)
    run.engine.close()
    return summary


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
    run.log.close()
    return summary
