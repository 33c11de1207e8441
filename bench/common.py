"""What the side-by-side throughput benchmarks (text_sft.py, vlm_sft.py) share: arguments, data, the Hugging Face
Trainer harness, the mmtune harness, child processes and the report.

Fairness rules both scripts follow, so only the frameworks differ:
- Same samples, encoded by the same call (mmtune.data.templates.encode), so ids and loss masks are identical.
- Same initial weights: every side builds its model with mmtune's `build_model` and the same seed.
- Each run is its own child process with the same thread count, so its peak RSS (VmHWM) is its own.
- One way to count: real (non-padding) positions, media positions included, processed from the end of the last
  warm-up step to the end of the last timed step, divided by the wall time in between. That window holds data
  loading, forward, backward and the optimizer step of every timed step.
- Same work timed (`--samples N`): a sample's cost per token depends on its length and on how much of it is
  supervised (the LM head), and in a few steps each side draws different samples (packing takes ~2.5x more a
  step). With --samples every side trains two epochs over the same N samples and times the second, so all sides
  time exactly the same tokens; without it, a fixed number of steps is timed after --warmup-steps.
- Useful FLOPs of those steps (bench/flops.py: from the model config, real positions only, the LM head where each
  side computes it) over the same time give GFLOP/s, compared with an fp32 GEMM ceiling timed in child processes
  before and after the runs on the same threads (the faster of the two).
"""
from __future__ import annotations

import argparse
import io
import itertools
import json
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch
from PIL import Image

from bench.flops import FlopModel

ROOT = Path(__file__).resolve().parents[1]
ALPACA = "samples/text/alpaca_en_demo.json"
"""Relative to the repository root, where the scripts run (and so recorded in reports without a machine's path)."""
RESULTS = ROOT / "bench" / "results"
IGNORE = -100
LENGTHS = "lengths.json"
FLOPS = "flops.json"
BIG = 10**9
"""eval_every / save_every for mmtune runs: nothing but the final checkpoint, after the timed steps."""


# ---------------------------------------------------------------- arguments and machine


def add_common_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="tiny:llama", help="LLM source for every side: tiny:llama or smollm2-135m")
    parser.add_argument("--steps", type=int, default=30, help="timed optimizer steps per run")
    parser.add_argument("--warmup-steps", type=int, default=3, help="steps run first and left out of the timing")
    parser.add_argument("--samples", type=int, default=0,
                        help="N > 0: every side trains two epochs over the same N samples (a seeded subset of "
                             "--data) and times the second, so all time the same tokens; --steps and "
                             "--warmup-steps are then unused")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--max-len", type=int, default=512)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads in every run")
    parser.add_argument("--repeats", type=int, default=1, help="runs per framework, alternating order; the fastest "
                                                                "is kept")
    parser.add_argument("--data", default=ALPACA, help="Alpaca-format JSON the samples come from")
    parser.add_argument("--results", default="", help="report file (default bench/results/<script>-<model>.txt)")
    parser.add_argument("--workdir", default="", help="shards, run dirs and logs (default: a fresh temp dir)")
    parser.add_argument("--resume", action="store_true",
                        help="reuse the data and the finished runs already in --workdir (after an interrupted run)")
    parser.add_argument("--child", default="", help=argparse.SUPPRESS)


def parse_args(description: str, runs: dict[str, str],
               extra: Callable[[argparse.ArgumentParser], None] | None = None) -> argparse.Namespace:
    """The common arguments, the script's own (`extra`), and `--runs`, checked against `runs`."""
    parser = argparse.ArgumentParser(description=description)
    add_common_args(parser)
    if extra:
        extra(parser)
    parser.add_argument("--runs", default=",".join(runs), help=f"comma-separated subset of {', '.join(runs)}")
    args = parser.parse_args()
    unknown = set(args.runs.split(",")) - set(runs)
    if unknown:
        parser.error(f"--runs: unknown {sorted(unknown)}; choose from {', '.join(runs)}")
    return args


def set_threads(threads: int) -> None:
    """Same intra-op threads everywhere; transformers' progress bars and load reports kept out of the report."""
    import transformers

    torch.set_num_threads(threads)
    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()


def machine_lines(threads: int) -> list[str]:
    import transformers

    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor())
    return [f"machine: {cpu}; {len(os.sched_getaffinity(0))} cores available; python {platform.python_version()}",
            f"torch {torch.__version__} ({threads} threads per run, fp32, CPU); transformers {transformers.__version__}"
            f"; trl {version_of('trl') or 'not installed'}"]


def load_line(when: str) -> str:
    """The machine's load average: other processes share the cores, so absolute figures vary from run to run."""
    one, five, fifteen = os.getloadavg()
    return f"load average at the {when} (1, 5, 15 min): {one:.1f}, {five:.1f}, {fifteen:.1f}"


def version_of(module: str) -> str | None:
    """The module's version, None when it is not importable (optional peers such as trl)."""
    try:
        return __import__(module).__version__
    except ImportError:
        return None


def results_path(args: argparse.Namespace, script: str) -> Path:
    return Path(args.results) if args.results else RESULTS / f"{script}-{args.model.replace(':', '-')}.txt"


# ---------------------------------------------------------------- data


def shards_of(workdir: Path) -> list[str]:
    """The training shards a benchmark wrote into WORKDIR/shards."""
    return sorted(str(p) for p in (workdir / "shards").glob("train-*.tar"))


def alpaca_shards(source: Path, out_dir: Path, samples: int = 0, seed: int = 0) -> list[str]:
    """The Alpaca records (all, or a seeded subset of `samples` of them in file order) as canonical shards, through
    the project's own builder."""
    from data_builders import build

    if samples:
        records = json.loads(Path(source).read_text())
        if not 0 < samples <= len(records):
            raise SystemExit(f"--samples: {source} has {len(records)} records, asked for {samples}")
        chosen = sorted(random.Random(seed).sample(range(len(records)), samples))
        source = out_dir.parent / f"{out_dir.name}-{samples}-records.json"
        source.parent.mkdir(parents=True, exist_ok=True)
        source.write_text(json.dumps([records[i] for i in chosen]))
    return [str(p) for p in build("alpaca", source, out_dir).shards]


def load_samples(shards: Iterable[str]) -> list:
    """Every Sample of `shards`, in file order."""
    from mmtune.data.shards import iter_refs, read_sample

    return [read_sample(ref) for shard in shards for ref in iter_refs(shard)]


def encode_all(samples: list, tokenizer, template: str, max_len: int, media_tokens: dict[str, int] | None = None):
    """(sample, Encoded) for every sample that keeps a supervised token after truncation, as mmtune trains on."""
    from mmtune.data.templates import encode, has_target

    out = []
    for s in samples:
        enc = encode(s.messages, tokenizer, template, media_tokens=media_tokens, max_len=max_len)
        if has_target(enc):
            out.append((s, enc))
    return out


# ---------------------------------------------------------------- measuring


@dataclass
class Step:
    """One optimizer step as the harness saw it."""
    real: int
    positions: int
    samples: int
    seconds: float
    loss: float
    flops: float


@dataclass
class Throughput:
    name: str
    real: int
    positions: int
    samples: int
    seconds: float
    first_loss: float
    last_loss: float
    flops: float
    peak_rss_gib: float = 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.real / self.seconds

    @property
    def samples_per_s(self) -> float:
        return self.samples / self.seconds

    @property
    def padding(self) -> float:
        return 1 - self.real / self.positions

    @property
    def gflops_per_token(self) -> float:
        return self.flops / self.real / 1e9

    @property
    def gflops_per_s(self) -> float:
        return self.flops / self.seconds / 1e9


def measure(name: str, steps: list[Step], args: argparse.Namespace) -> Throughput:
    """Totals over the timed steps (timed_steps); the loss of step 1 and of the last step show that training ran."""
    timed = timed_steps(name, steps, args)
    return Throughput(name, sum(s.real for s in timed), sum(s.positions for s in timed),
                      sum(s.samples for s in timed), sum(s.seconds for s in timed), steps[0].loss, steps[-1].loss,
                      sum(s.flops for s in timed))


def timed_steps(name: str, steps: list[Step], args: argparse.Namespace) -> list[Step]:
    """With --samples N, the second epoch's steps: those after the first N samples, which must end on a step and
    be followed by exactly N more. Otherwise the steps after --warmup-steps."""
    if not args.samples:
        if len(steps) <= args.warmup_steps:
            raise RuntimeError(f"{name}: {len(steps)} steps recorded, none after {args.warmup_steps} warm-up steps")
        return steps[args.warmup_steps:]
    seen = list(itertools.accumulate(s.samples for s in steps))
    if args.samples not in seen or seen[-1] != 2 * args.samples:
        raise RuntimeError(f"{name}: steps do not make two epochs of {args.samples} samples (samples seen after "
                           f"each step: {seen})")
    return steps[seen.index(args.samples) + 1:]


# ---------------------------------------------------------------- the Hugging Face side


class PadCollator:
    """DataCollatorForSeq2Seq's right padding (labels padded with -100), plus stacked `pixel_values` if present."""

    def __init__(self, tokenizer):
        from transformers import DataCollatorForSeq2Seq

        tokenizer.padding_side = "right"
        self.pad = DataCollatorForSeq2Seq(tokenizer, padding=True, label_pad_token_id=IGNORE, return_tensors="pt")

    def __call__(self, features: list[dict]) -> dict:
        pixels = [f.pop("pixel_values") for f in features if "pixel_values" in f]
        batch = self.pad(features)
        if pixels:
            batch["pixel_values"] = torch.stack(pixels)
        return batch


class ExampleDataset(torch.utils.data.Dataset):
    """Pre-tokenized examples as a plain torch Dataset; an example's `image` bytes, if any, are decoded and run
    through `image_processor` when the item is fetched, as LLaVA-style datasets do."""

    def __init__(self, examples: list[dict], image_processor=None):
        self.examples, self.image_processor = examples, image_processor

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, i: int) -> dict:
        example = dict(self.examples[i])
        image = example.pop("image", None)
        if image is not None:
            rgb = Image.open(io.BytesIO(image)).convert("RGB")
            example["pixel_values"] = self.image_processor(images=rgb, return_tensors="pt")["pixel_values"][0]
        return example


def hf_examples(encoded: list, media_id: int | None = None) -> list[dict]:
    """input_ids / attention_mask / labels from mmtune encodings; media sentinels become `media_id` (the peer's
    `<image>` token), so every image takes the same positions on both sides. An image's bytes go along as `image`."""
    from mmtune.data.templates import MEDIA_TOKEN_IDS

    out = []
    for sample, enc in encoded:
        ids = [media_id if i == MEDIA_TOKEN_IDS["image"] else i for i in enc.input_ids]
        example = {"input_ids": ids, "attention_mask": [1] * len(ids), "labels": list(enc.labels)}
        if sample.media:
            example["image"] = sample.data[sample.media[0].member]
        out.append(example)
    return out


def training_args(cls, out_dir: Path, args: argparse.Namespace, **extra):
    """The Trainer settings every Hugging Face run shares: batch, steps (or two epochs with --samples), AdamW at
    `args.lr` with a cosine schedule, clipping at 1.0, fp32 on CPU, no eval, no saving, no reporting, data loaded
    in the training process."""
    length = {"num_train_epochs": 2} if args.samples else {"max_steps": args.warmup_steps + args.steps}
    return cls(output_dir=str(out_dir), per_device_train_batch_size=args.batch_size, **length,
               learning_rate=args.lr, lr_scheduler_type="cosine",
               warmup_steps=10, weight_decay=0.0, max_grad_norm=1.0, logging_steps=1, save_strategy="no",
               eval_strategy="no", report_to=[], dataloader_num_workers=0, use_cpu=True, seed=args.seed,
               data_seed=args.seed, remove_unused_columns=False, disable_tqdm=True, **extra)


def run_hf(trainer_cls, workdir: Path, **trainer_kwargs) -> list[Step]:
    """Train with `trainer_cls` (Trainer, SFTTrainer...) and return one Step per optimizer step (its useful FLOPs
    from the parent's WORKDIR/flops.json)."""
    from transformers import TrainerCallback

    clock: dict[str, list] = {"ends": [], "batches": [], "losses": []}
    flops = FlopModel.load(workdir / FLOPS)

    class Clock(TrainerCallback):
        def on_train_begin(self, *args, **kwargs):
            clock["ends"].append(time.perf_counter())

        def on_step_end(self, *args, **kwargs):
            clock["ends"].append(time.perf_counter())

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "loss" in logs:
                clock["losses"].append(float(logs["loss"]))

    class Counted(trainer_cls):
        def training_step(self, model, inputs, *args, **kwargs):
            clock["batches"].append(batch_counts(inputs, flops))
            return super().training_step(model, inputs, *args, **kwargs)

    Counted(callbacks=[Clock()], **trainer_kwargs).train()
    ends = clock["ends"]
    return [Step(real, positions, samples, ends[i + 1] - ends[i], clock["losses"][i], flops)
            for i, (real, positions, samples, flops) in enumerate(clock["batches"][:len(ends) - 1])]


def batch_counts(inputs: dict, flops: FlopModel) -> tuple[int, int, int, float]:
    """(real positions, all positions, samples, useful FLOPs) of a Trainer batch: padded rows carry an attention
    mask; padding-free rows (TRL packing) carry position ids restarting at 0 for every sample and no padding. The
    model computes its LM head at every position; images add their tower and projector FLOPs."""
    if "attention_mask" in inputs:
        lengths = inputs["attention_mask"].sum(1).tolist()
        positions = inputs["attention_mask"].numel()
    else:
        starts = (inputs["position_ids"].flatten() == 0).nonzero().flatten().tolist()
        positions = inputs["input_ids"].numel()
        lengths = [b - a for a, b in zip(starts, starts[1:] + [positions])]
    images = len(inputs["pixel_values"]) if "pixel_values" in inputs else 0
    useful = sum(flops.sample(n, n) for n in lengths) + images * flops.image
    return sum(lengths), positions, len(lengths), useful


def fixed_batch_losses(cfg, model, tokenizer, peer, samples: list, peer_items: list[dict]) -> tuple[float, float]:
    """Loss per supervised token of mmtune's model (through its own data path: sample encoder, collate, sft
    objective) and of the peer (PadCollator, model(**batch).loss) on one batch of the same samples, before any step.
    """
    from mmtune.data.packing import collate
    from mmtune.models.objectives import sft
    from mmtune.train.trainer import sample_encoder

    encoder = sample_encoder(cfg, model, tokenizer)
    batch = collate([[encoder(s)] for s in samples], tokenizer.pad_token_id)
    with torch.no_grad():
        out = sft(model, batch)
        theirs = peer(**PadCollator(tokenizer)(peer_items)).loss
    return float(out.loss_sum) / out.count, float(theirs)


# ---------------------------------------------------------------- the mmtune side


def build_mmtune_model(overrides: list[str]):
    """(config, model, tokenizer) exactly as mmtune.train builds them for `overrides`: peers start from these
    weights, so every side trains the same initial model."""
    import mmtune
    from mmtune.models.build import build_model

    cfg = mmtune.load_config(None, overrides)
    return (cfg, *build_model(cfg))


MMTUNE_RUNS = {"mmtune": "mmtune", "mmtune-packed": "mmtune packed", "mmtune-packed-mask": "mmtune packed, dense mask",
               "mmtune-packed-compile": "mmtune packed + compile", "mmtune-packed-ckpt": "mmtune packed + act. ckpt"}
"""The mmtune configurations both benchmarks run: kind -> label."""


def mmtune_overrides(args: argparse.Namespace, shards: list[str], out_dir: Path, kind: str = "mmtune") -> list[str]:
    """The mmtune settings matching training_args (same batch, steps or epochs, lr, clipping, precision and seed)
    for a kind of MMTUNE_RUNS: packing for `-packed`, activation checkpointing for `-ckpt`, compiled
    decoder layers for `-compile`, packed rows' attention as one dense-mask call for `-mask`."""
    packing, checkpointing = "-packed" in kind, kind.endswith("-ckpt")
    length = "train.epochs=2" if getattr(args, "samples", 0) else f"train.steps={args.warmup_steps + args.steps}"
    return [f"model.llm={args.model}", f"data.train=[{','.join(shards)}]", "data.template=chatml",
            f"data.max_len={args.max_len}", f"data.packing={str(packing).lower()}", "data.num_workers=0",
            f"train.activation_checkpointing={str(checkpointing).lower()}",
            f"train.compile={str(kind.endswith('-compile')).lower()}",
            f"train.packed_attention={'mask' if kind.endswith('-mask') else 'chunked'}",
            f"train.batch_size={args.batch_size}", length,
            f"train.lr={args.lr}", "train.warmup=10", "train.weight_decay=0.0", "train.clip=1.0",
            "train.precision=fp32", f"train.seed={args.seed}", "train.log_every=1", f"train.eval_every={BIG}",
            f"train.save_every={BIG}", f"train.out_dir={out_dir}", "tuning.llm=full"]


def write_lengths(workdir: Path, encoded: list, flops: FlopModel) -> None:
    """For run_mmtune, written by the parent before any run: each sample id's encoded length, supervised next-token
    targets (where mmtune's sparse head runs) and media items; and the FLOPs model every run counts with."""
    def supervised(labels: list[int]) -> int:
        return sum(label != IGNORE for label in labels[1:])

    (workdir / LENGTHS).write_text(json.dumps({s.id: [len(e.input_ids), supervised(e.labels), len(s.media)]
                                               for s, e in encoded}))
    flops.save(workdir / FLOPS)


def run_mmtune(overrides: list[str], workdir: Path) -> list[Step]:
    """Train with `mmtune.finetune` and rebuild one Step per optimizer step from its run logs.

    metrics.jsonl gives each step's loss, padding fraction and real tokens/s (tokens over the time since the
    previous step's log); samples.jsonl gives each step's sample ids, whose encoded lengths (write_lengths) sum to
    the step's real tokens. So seconds = real / tokens_per_s and positions = real / (1 - padding). The LM head runs
    at supervised positions only.
    """
    import mmtune

    cfg = mmtune.load_config(None, overrides)
    run_dir = Path(cfg.train.out_dir)
    shutil.rmtree(run_dir, ignore_errors=True)  # a fresh run, never a resumed one
    mmtune.finetune(cfg)
    metrics = {r["step"]: r for r in _jsonl(run_dir / "metrics.jsonl") if "tokens_per_s" in r}
    order = {r["step"]: r["ids"] for r in _jsonl(run_dir / "samples.jsonl")}
    lengths = json.loads((workdir / LENGTHS).read_text())
    flops = FlopModel.load(workdir / FLOPS)
    steps = []
    for step in sorted(metrics):
        m, samples = metrics[step], [lengths[i] for i in order[step]]
        real = sum(n for n, _, _ in samples)
        useful = sum(flops.sample(n, supervised) + images * flops.image for n, supervised, images in samples)
        steps.append(Step(real, round(real / (1 - m["padding"])), len(samples), real / m["tokens_per_s"], m["loss"],
                          useful))
    return steps


def _jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


# ---------------------------------------------------------------- child processes


def run_child(script: str, argv: list[str], kind: str, workdir: Path, env: dict[str, str] | None = None) -> None:
    """Run `python -m bench.<script> ARGV --child KIND` from the repository root; it writes WORKDIR/KIND.json.

    Its output goes to WORKDIR/KIND.log; on failure the tail of that log is raised.
    """
    log = workdir / f"{kind}.log"
    command = [sys.executable, "-m", f"bench.{script}", *argv, "--child", kind, "--workdir", str(workdir)]
    with open(log, "w") as out:
        done = subprocess.run(command, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=child_env(env))
    if done.returncode != 0:
        tail = "\n".join(log.read_text().splitlines()[-30:])
        raise RuntimeError(f"run {kind!r} failed (exit {done.returncode}); end of {log}:\n{tail}")


def child_env(extra: dict[str, str] | None) -> dict[str, str]:
    """The parent's environment, offline, with the repository first on the path."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", TOKENIZERS_PARALLELISM="false", **(extra or {}))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p)
    return env


def thread_env(threads: int) -> dict[str, str]:
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}


def compare(script: str, args: argparse.Namespace, labels: dict[str, str], workdir: Path,
            report: Report) -> list[Throughput]:
    """Run each kind of `labels` (kind -> what the report calls it) in its own child, `args.repeats` times in
    alternating order (a slow spell of the shared machine then does not always hit the same side); keep each
    kind's fastest run, the one least disturbed by other load. Each attempt's result is kept as
    WORKDIR/KIND-ATTEMPT.json; with --resume an attempt that already has one is not run again."""
    best: dict[str, Throughput] = {}
    kinds = list(labels)
    gemm_child(args, workdir, "before")
    for attempt in range(1, args.repeats + 1):
        for kind in kinds if attempt % 2 else kinds[::-1]:
            saved = workdir / f"{kind}-{attempt}.json"
            started = time.perf_counter()
            how = "reused from an earlier run in this workdir"
            if not (args.resume and saved.exists()):
                run_child(script, sys.argv[1:], kind, workdir, thread_env(args.threads))
                (workdir / f"{kind}.json").replace(saved)
                how = f"child took {time.perf_counter() - started:.0f}s with start-up"
            row = Throughput(**json.loads(saved.read_text()))
            report.say(f"- {labels[kind]}, attempt {attempt}: {row.tokens_per_s:,.0f} real tokens/s ({how})")
            if kind not in best or row.tokens_per_s > best[kind].tokens_per_s:
                best[kind] = row
    gemm_child(args, workdir, "after")
    return [best[k] for k in kinds]


def gemm_child(args: argparse.Namespace, workdir: Path, when: str) -> None:
    """Time the GEMM ceiling and the decoder layers' GEMMs alone (bench/flops.py) in a child on the runs' threads:
    WORKDIR/gemm-WHEN.json."""
    saved = workdir / f"gemm-{when}.json"
    if args.resume and saved.exists():
        return
    tokens = args.batch_size * args.max_len
    shapes = FlopModel.load(workdir / FLOPS).gemm_shapes(tokens)
    command = [sys.executable, "-m", "bench.flops", "--threads", str(args.threads), "--out", str(saved),
               "--shapes", ",".join("x".join(map(str, s)) for s in shapes),
               "--layers", str(workdir / FLOPS), "--tokens", str(tokens)]
    subprocess.run(command, cwd=ROOT, check=True, env=child_env(thread_env(args.threads)))


def gemm_ceiling(workdir: Path) -> tuple[float, list[str]]:
    """(ceiling GFLOP/s, lines saying how it was measured): the fastest shape of the before and after measurements,
    and the best rate of the decoder layers' GEMMs alone as a fraction of it."""
    measured = {when: json.loads((workdir / f"gemm-{when}.json").read_text()) for when in ("before", "after")}
    ceiling = max(max(m["shapes"].values()) for m in measured.values())
    detail = "; ".join(f"{when}: " + ", ".join(f"{shape} {g:.1f}" for shape, g in m["shapes"].items())
                       for when, m in measured.items())
    layers = max(m["layers"] for m in measured.values())
    return ceiling, [f"fp32 GEMM ceiling {ceiling:.0f} GFLOP/s (best of 5 per shape, GFLOP/s {detail})",
                     f"the decoder layers' GEMMs alone, forward and backward as a step runs them (bench/flops.py "
                     f"layer_pass_gflops, best of before and after): {layers:.0f} GFLOP/s, {layers / ceiling:.0%} of "
                     "the ceiling, the most a step's linear work reaches with no other work at all"]


def write_child_result(workdir: Path, kind: str, result: Throughput) -> None:
    """Called last in a child: the measured totals plus this process's peak RSS."""
    result.peak_rss_gib = peak_rss_kib() / 2**20
    (workdir / f"{kind}.json").write_text(json.dumps(asdict(result)))


def peak_rss_kib() -> int:
    """VmHWM: this program's own peak (ru_maxrss also counts the parent's pages the child had before exec)."""
    status = Path("/proc/self/status")
    if status.exists():
        return next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


# ---------------------------------------------------------------- report


class Report:
    """Lines printed as they come and written to `path` at the end."""

    def __init__(self, path: Path):
        self.path, self.lines = path, []

    def say(self, line: str = "") -> None:
        print(line, flush=True)
        self.lines.append(line)

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("\n".join(self.lines) + "\n")
        print(f"report written to {self.path}")


def table(rows: list[Throughput], baseline: str, ceiling: float) -> list[str]:
    """Markdown table of the runs; the ratio columns divide real tokens/s and peak RSS by the `baseline` row's,
    the last one useful GFLOP/s by the GEMM `ceiling`."""
    base = next(r for r in rows if r.name == baseline)
    out = [f"| run | real tokens/s | samples/s | padding | peak RSS | loss step 1 -> last | vs {baseline} | "
           "RSS vs it | GFLOP/token | GFLOP/s | of GEMM ceiling |",
           "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        out.append(f"| {r.name} | {r.tokens_per_s:,.0f} | {r.samples_per_s:.2f} | {r.padding:.1%} | "
                   f"{r.peak_rss_gib:.2f} GiB | {r.first_loss:.3f} -> {r.last_loss:.3f} | "
                   f"{r.tokens_per_s / base.tokens_per_s:.2f}x | {r.peak_rss_gib / base.peak_rss_gib:.2f}x | "
                   f"{r.gflops_per_token:.3f} | {r.gflops_per_s:.1f} | {r.gflops_per_s / ceiling:.0%} |")
    return out


def config_lines(args: argparse.Namespace, extra: dict | None = None) -> list[str]:
    unused = ("steps", "warmup_steps") if args.samples else ()
    shown = {k: v for k, v in vars(args).items() if k not in ("child", "results", "workdir", *unused)}
    return [f"config: {json.dumps({**shown, **(extra or {})})}"]


# ---------------------------------------------------------------- the parent process both scripts run


@dataclass
class Bench:
    """What one benchmark script plugs into `run_parent`."""

    script: str  # module name under bench/, for the children
    title: str
    report_name: Callable[[argparse.Namespace], str]  # bench/results/<report_name(args)>-<model>.txt
    config: dict  # extra settings shown in the report header
    runs: dict[str, str]  # kind -> label in the report
    baseline: str  # the kind the speed-ups are relative to
    prepare: Callable[[argparse.Namespace, Path], None]  # writes the data into the workdir
    prepared: Callable[[Path], bool]  # whether a workdir already holds that data (for --resume)
    loss_check: Callable[[argparse.Namespace, Path], str]


def check_same_settings(args: argparse.Namespace, workdir: Path) -> None:
    """With --resume, the workdir's data and finished runs are reused only if they were made with the same
    settings (steps, batch, model, ...); otherwise this says which differ. Records the settings for the next run."""
    settings = {k: v for k, v in vars(args).items()
                if k not in ("child", "results", "workdir", "resume", "runs", "repeats")}
    saved = workdir / "settings.json"
    if args.resume and saved.exists():
        before = json.loads(saved.read_text())
        changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
        if changed:
            sys.exit(f"--resume: {workdir} holds runs made with other settings ({', '.join(changed)}); "
                     "run again without --resume or with a fresh --workdir")
    saved.write_text(json.dumps(settings))


def run_parent(bench: Bench, args: argparse.Namespace, kinds: list[str], notes: Iterable[str] = ()) -> None:
    """Header, data (kept with --resume), the loss check, every run in its own child, the table; the report goes
    to bench/results and stdout."""
    set_threads(args.threads)
    temporary = not args.workdir
    workdir = Path(args.workdir or tempfile.mkdtemp(prefix=f"bench-{bench.script}-"))
    workdir.mkdir(parents=True, exist_ok=True)
    args.workdir = str(workdir)
    report = Report(results_path(args, bench.report_name(args)))
    report.say(f"# {bench.title}")
    report.say()
    for line in [*machine_lines(args.threads), *config_lines(args, bench.config), *notes, load_line("start")]:
        report.say(line)
    check_same_settings(args, workdir)
    if not (args.resume and bench.prepared(workdir)):
        bench.prepare(args, workdir)
    report.say(f"loss check: {bench.loss_check(args, workdir)}")
    rows = compare(bench.script, args, {k: bench.runs[k] for k in kinds}, workdir, report)
    ceiling, how = gemm_ceiling(workdir)
    for line in how:
        report.say(line)
    report.say(load_line("end"))
    report.say()
    for line in table(rows, bench.runs[bench.baseline] if bench.baseline in kinds else rows[0].name, ceiling):
        report.say(line)
    report.save()
    if temporary:
        shutil.rmtree(workdir)
