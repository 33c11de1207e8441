"""Throughput and peak memory of one recipe under each engine: one process, then two with DDP, DeepSpeed ZeRO-1/2/3
and FSDP2, on SmolLM2-135M (LoRA and full fine-tuning) by default.

    python -m bench.scaling                                   # SmolLM2-135M, LoRA and full, every engine
    python -m bench.scaling --model tiny:llama --steps 3      # a quick look

Every run is `mmtune train` itself (torchrun for two processes) with the same global batch (8 rows of 512 tokens by
default: 8 on one process, 4 per rank on two), fp32, and the machine's threads split evenly over the processes.
Real tokens/s is the median of the per-step `tokens_per_s` (summed over ranks) of the steps after the warm-up;
peak RSS is the largest resident size of any process of the run (its rank processes and launcher), from wait4.
On a 2-core CPU two processes share the same two cores, so this measures the engines' overhead, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.common import ALPACA, RESULTS, ROOT, Report, alpaca_shards, child_env, machine_lines, thread_env

ENGINES = {
    "single": (1, "{name: single}"),
    "ddp": (2, "{name: ddp}"),
    "zero1": (2, "{name: deepspeed, args: {stage: 1}}"),
    "zero2": (2, "{name: deepspeed, args: {stage: 2}}"),
    "zero3": (2, "{name: deepspeed, args: {stage: 3}}"),
    "fsdp": (2, "{name: fsdp}"),
}
TUNING = {"lora": ["tuning.llm=lora", "tuning.lora.r=16", "tuning.lora.alpha=32"], "full": ["tuning.llm=full"]}


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="smollm2-135m")
    p.add_argument("--engines", default=",".join(ENGINES), help=f"comma-separated subset of {', '.join(ENGINES)}")
    p.add_argument("--tuning", default="lora,full", help="comma-separated subset of lora, full")
    p.add_argument("--steps", type=int, default=6, help="optimizer steps per run, warm-up included")
    p.add_argument("--warmup-steps", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=8, help="global rows per step")
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--threads", type=int, default=2, help="threads of the whole run, split over its processes")
    p.add_argument("--data", default=ALPACA)
    p.add_argument("--workdir", default="")
    p.add_argument("--results", default="")
    args = p.parse_args()
    for name, known in (("engines", ENGINES), ("tuning", TUNING)):
        unknown = set(getattr(args, name).split(",")) - set(known)
        if unknown:
            p.error(f"--{name}: unknown {sorted(unknown)}; choose from {', '.join(known)}")
    return args


def command(args: argparse.Namespace, engine: str, tuning: str, shards: list[str], out_dir: Path) -> list[str]:
    procs, spec = ENGINES[engine]
    overrides = [f"model.llm={args.model}", f"data.train={shards}", f"data.max_len={args.max_len}",
                 "data.packing=true", "data.template=chatml", f"train.steps={args.steps}",
                 f"train.batch_size={args.batch_size // procs}", "train.log_every=1", "train.eval_every=1000000",
                 "train.save_every=1000000", "train.warmup=1", f"train.out_dir={out_dir}", f"train.engine={spec}",
                 *TUNING[tuning]]
    launch = ([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={procs}"]
              if procs > 1 else [sys.executable])
    recipe = out_dir.parent / "recipe.yaml"  # everything is in the overrides
    recipe.write_text("{}\n")
    return [*launch, "-m", "mmtune.cli", "train", str(recipe), *overrides]


def measure(args: argparse.Namespace, engine: str, tuning: str, shards: list[str], workdir: Path) -> dict:
    """One run in its own process tree; its peak RSS comes from wait4 on that tree alone."""
    procs = ENGINES[engine][0]
    out_dir = workdir / f"{engine}-{tuning}"
    shutil.rmtree(out_dir, ignore_errors=True)
    env = child_env(thread_env(max(1, args.threads // procs)))
    log = open(workdir / f"{engine}-{tuning}.log", "w")
    started = time.perf_counter()
    proc = subprocess.Popen(command(args, engine, tuning, shards, out_dir), env=env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise SystemExit(f"{engine}/{tuning} failed (exit {proc.returncode}); see {log.name}")
    records = [json.loads(line) for line in (out_dir / "metrics.jsonl").read_text().splitlines()]
    timed = [r["tokens_per_s"] for r in records if "tokens_per_s" in r and r["step"] > args.warmup_steps]
    losses = [r["loss"] for r in records if "loss" in r]
    return {"engine": engine, "tuning": tuning, "procs": procs, "tokens_per_s": statistics.median(timed),
            "peak_rss_gib": usage.ru_maxrss / 2**20, "first_loss": losses[0], "last_loss": losses[-1],
            "wall_s": time.perf_counter() - started}


def table(rows: list[dict]) -> list[str]:
    out = ["| tuning | engine | processes | real tokens/s | vs one process | peak RSS (largest process) | "
           "loss step 1 -> last |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        base = next((b for b in rows if b["tuning"] == r["tuning"] and b["engine"] == "single"), None)
        ratio = f"{r['tokens_per_s'] / base['tokens_per_s']:.2f}x" if base else "-"
        out.append(f"| {r['tuning']} | {r['engine']} | {r['procs']} | {r['tokens_per_s']:,.0f} | {ratio} | "
                   f"{r['peak_rss_gib']:.2f} GiB | {r['first_loss']:.3f} -> {r['last_loss']:.3f} |")
    return out


def main() -> None:
    args = parse()
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix="mmtune-scaling-"))
    workdir.mkdir(parents=True, exist_ok=True)
    report = Report(Path(args.results) if args.results else
                    RESULTS / f"scaling-{args.model.replace(':', '-')}.txt")
    report.say(f"# bench/scaling.py: engines side by side ({args.model}, global batch {args.batch_size} x "
               f"{args.max_len}, packed, fp32)")
    for line in machine_lines(args.threads):
        report.say(line)
    shards = sorted(str(p) for p in (workdir / "shards").glob("train-*.tar")) or \
        alpaca_shards(ROOT / args.data, workdir / "shards")
    rows = []
    for tuning in args.tuning.split(","):
        for engine in args.engines.split(","):
            rows.append(measure(args, engine, tuning, shards, workdir))
            r = rows[-1]
            report.say(f"- {tuning}/{engine}: {r['tokens_per_s']:,.0f} real tokens/s, peak RSS "
                       f"{r['peak_rss_gib']:.2f} GiB ({r['wall_s']:.0f}s with start-up)")
    report.say()
    for line in table(rows):
        report.say(line)
    report.save()


if __name__ == "__main__":
    main()
