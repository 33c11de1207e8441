"""Where a training step's time goes: mmtune's real step (trainer.train_step: data, forward, backward, optimizer)
under torch.profiler, its self CPU time grouped by kind of work. Run from the repository root:

    python -m bench.profile_step --model smollm2-135m                     # packed 8 x 512, full fine-tuning
    python -m bench.profile_step --model smollm2-135m --threads 1 data.packing=false

GEMMs (mm, addmm, bmm) are the useful work; their achieved GFLOP/s (the profiler's FLOP counts over their time)
against the GEMM ceiling of bench/flops.py on the same threads says whether the matmuls themselves are slow or the
rest of the step is what costs. Everything else is listed by kind: attention kernels, elementwise and norm work,
copies and layout changes, the optimizer, and the rest, with the ops that take most time.
"""
from __future__ import annotations

import argparse
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import torch

from bench.common import ALPACA, alpaca_shards, mmtune_overrides, ROOT, set_threads
from bench.flops import FlopModel, gemm_gflops

GEMM = "GEMM (mm, addmm, bmm)"
KINDS = {
    GEMM: ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addmm_"),
    "attention kernels": ("scaled_dot_product", "flash_attention", "_efficient_attention"),
    "optimizer (AdamW)": ("aten::_foreach", "aten::_fused_adam"),
    "copies and layout": ("aten::copy_", "aten::cat", "aten::clone", "aten::index", "aten::gather", "aten::scatter",
                          "aten::fill_", "aten::zero_", "aten::zeros", "aten::empty", "aten::stack",
                          "aten::contiguous", "aten::_to_copy", "aten::masked", "aten::where", "aten::split"),
    "elementwise and norms": ("aten::mul", "aten::add", "aten::sub", "aten::div", "aten::silu", "aten::pow",
                              "aten::mean", "aten::rsqrt", "aten::neg", "aten::exp", "aten::sum", "aten::sigmoid",
                              "aten::logsumexp", "aten::sqrt", "aten::lerp", "aten::threshold", "aten::gelu",
                              "aten::tanh", "aten::embedding"),
}
"""Kind of work -> op name prefixes (self time; an op's children are counted under their own names)."""
OTHER = "other"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--model", default="smollm2-135m", help="LLM source: smollm2-135m or tiny:llama")
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--max-len", type=int, default=512)
    p.add_argument("--warmup-steps", type=int, default=1, help="steps run before the profiled ones")
    p.add_argument("--steps", type=int, default=2, help="profiled steps")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top", type=int, default=12, help="ops listed by self time")
    p.add_argument("overrides", nargs="*", help="more section.key=value settings, e.g. data.packing=false")
    return p.parse_args()


def kind_of(name: str) -> str:
    return next((kind for kind, prefixes in KINDS.items() if name.startswith(prefixes) or
                 (kind == "attention kernels" and any(p in name for p in prefixes))), OTHER)


def profile(args: argparse.Namespace, workdir: Path):
    """(profiler key averages of the profiled steps, their wall seconds, real tokens they trained, the model), with
    the settings of text_sft.py's packed mmtune run."""
    import mmtune
    from mmtune.train.engine import local_device
    from mmtune.train.host_memory import freed_memory, policy_for
    from mmtune.train.trainer import setup, train_step

    shards = alpaca_shards(ROOT / ALPACA, workdir / "shards")
    cfg = mmtune.load_config(None, [*mmtune_overrides(args, shards, workdir / "run", "mmtune-packed"),
                                    *args.overrides])
    with freed_memory(policy_for(local_device().type, cfg.train.activation_checkpointing)):  # as mmtune.train
        run = setup(cfg, resume=False, callbacks=[])
        run.model.train()
        for _ in range(args.warmup_steps):
            train_step(run)
        tokens = 0
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU], with_flops=True) as prof:
            started = time.perf_counter()
            for _ in range(args.steps):
                tokens += train_step(run)["tokens"]
            seconds = time.perf_counter() - started
    return prof.key_averages(), seconds, tokens, run.model


def report(events, seconds: float, tokens: int, ceiling: float, top: int) -> list[str]:
    by_kind: dict[str, float] = defaultdict(float)
    gemm_flops = 0.0
    for e in events:
        kind = kind_of(e.key)
        by_kind[kind] += e.self_cpu_time_total / 1e6
        if kind == GEMM:
            gemm_flops += e.flops
    total = sum(by_kind.values())
    gemm_s = by_kind[GEMM]
    lines = [f"profiled: {seconds:.1f} s wall, {tokens:,} real tokens ({tokens / seconds:,.0f}/s), "
             f"{total:.1f} s self CPU time in ops",
             f"GEMMs: {gemm_flops / 1e9:,.0f} GFLOP in {gemm_s:.1f} s = {gemm_flops / 1e9 / max(gemm_s, 1e-9):.1f} "
             f"GFLOP/s ({gemm_flops / 1e9 / max(gemm_s, 1e-9) / ceiling:.0%} of the {ceiling:.0f} GFLOP/s ceiling); "
             f"over the whole step {gemm_flops / 1e9 / seconds:.1f} GFLOP/s ({gemm_flops / 1e9 / seconds / ceiling:.0%})",
             "", "| kind of work | self CPU s | share |", "|---|---|---|"]
    for kind, s in sorted(by_kind.items(), key=lambda kv: -kv[1]):
        lines.append(f"| {kind} | {s:.2f} | {s / total:.1%} |")
    lines += ["", f"| op (top {top} by self time) | kind | self CPU s | share | calls |", "|---|---|---|---|---|"]
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:top]:
        lines.append(f"| {e.key} | {kind_of(e.key)} | {e.self_cpu_time_total / 1e6:.2f} | "
                     f"{e.self_cpu_time_total / 1e6 / total:.1%} | {e.count} |")
    return lines


def main() -> None:
    args = parse()
    set_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="mmtune-profile-") as tmp:
        events, seconds, tokens, model = profile(args, Path(tmp))
    shapes = FlopModel.of_llm(model.llm.config).gemm_shapes(args.batch_size * args.max_len)
    ceiling = max(gemm_gflops(shapes, args.threads).values())
    print(f"model {args.model}, batch {args.batch_size} x {args.max_len}, {args.threads} threads, "
          f"settings {args.overrides or 'packed, full fine-tuning'}")
    print("\n".join(report(events, seconds, tokens, ceiling, args.top)))


if __name__ == "__main__":
    main()
