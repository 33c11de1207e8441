"""Text SFT throughput, side by side: mmtune (unpacked and packed) against transformers' Trainer, and TRL's
SFTTrainer (unpacked and packed) when `trl` is importable. Run from the repository root:

    python -m bench.text_sft                              # tiny:llama, 30 timed steps after 3 warm-up steps
    python -m bench.text_sft --model smollm2-135m --steps 10
    python -m bench.text_sft --runs trainer,mmtune        # a subset

Every side trains the same model (built by mmtune's build_model with one seed) on the Alpaca demo records, encoded
once by mmtune's ChatML template with loss on assistant tokens only, batch 8, max length 512, fp32, AdamW. Before
the runs, both models score one identical batch, and the two losses are printed: they must agree.

Useful FLOPs per sample of L real positions (bench/flops.py): 6 N L + 6 layers (heads x head_dim) L (L+1)
+ 6 hidden vocabulary S, N the decoder's linear weights, S the positions the LM head runs at (supervised ones for
mmtune, all L for the Trainer and TRL); reported per real token, per second and as a fraction of an fp32 GEMM
ceiling timed before and after the runs on the same threads.
"""
from __future__ import annotations

import argparse
import copy
from pathlib import Path

from bench.common import (Bench, alpaca_shards, build_mmtune_model, encode_all, ExampleDataset, fixed_batch_losses,
                          hf_examples, load_samples, measure, MMTUNE_RUNS, mmtune_overrides, PadCollator, parse_args,
                          run_hf, run_mmtune, run_parent, set_threads, shards_of, training_args, version_of,
                          write_child_result, write_lengths)
from bench.flops import FlopModel

TEMPLATE = "chatml"
RUNS = {
    "trainer": "transformers Trainer",
    "trl": "TRL SFTTrainer",
    "trl-packed": "TRL SFTTrainer packed",
    **MMTUNE_RUNS,
}
BASELINE = "trainer"


def parse() -> argparse.Namespace:
    return parse_args(__doc__.split("\n\n")[0], RUNS)


def peer_and_data(args: argparse.Namespace, workdir: Path):
    """(mmtune config, mmtune model, the Hugging Face model it wraps, tokenizer, encoded samples)."""
    shards = shards_of(workdir)
    cfg, model, tokenizer = build_mmtune_model(mmtune_overrides(args, shards, workdir / "check"))
    encoded = encode_all(load_samples(shards), tokenizer, TEMPLATE, args.max_len)
    return cfg, model, model.llm, tokenizer, encoded


# ---------------------------------------------------------------- children: one framework each


def run_trainer(args: argparse.Namespace, workdir: Path):
    from transformers import Trainer, TrainingArguments

    _, _, peer, tokenizer, encoded = peer_and_data(args, workdir)
    return run_hf(Trainer, workdir, model=peer, args=training_args(TrainingArguments, workdir / "trainer", args),
                  train_dataset=ExampleDataset(hf_examples(encoded)), data_collator=PadCollator(tokenizer),
                  processing_class=tokenizer)


def run_trl(args: argparse.Namespace, workdir: Path, packing: bool):
    """SFTTrainer on the same pre-tokenized ids and labels; its own collator (padding-free when packing)."""
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    _, _, peer, tokenizer, encoded = peer_and_data(args, workdir)
    rows = [{"input_ids": e["input_ids"], "labels": e["labels"]} for e in hf_examples(encoded)]
    config = training_args(SFTConfig, workdir / f"trl-{packing}", args, max_length=args.max_len, packing=packing,
                           bf16=False, activation_checkpointing=False)  # SFTConfig defaults both to True
    return run_hf(SFTTrainer, workdir, model=peer, args=config, train_dataset=Dataset.from_list(rows),
                  processing_class=tokenizer)


def run_ours(args: argparse.Namespace, workdir: Path, kind: str):
    return run_mmtune(mmtune_overrides(args, shards_of(workdir), workdir / kind, kind), workdir)


def child(args: argparse.Namespace) -> None:
    set_threads(args.threads)
    workdir = Path(args.workdir)
    kind = args.child
    if kind == "trainer":
        steps = run_trainer(args, workdir)
    elif kind.startswith("trl"):
        steps = run_trl(args, workdir, packing=kind.endswith("packed"))
    else:
        steps = run_ours(args, workdir, kind)
    write_child_result(workdir, kind, measure(RUNS[kind], steps, args))


# ---------------------------------------------------------------- parent: data, loss check, runs, report


def loss_check(args: argparse.Namespace, workdir: Path) -> str:
    """Both losses on one batch; also writes the sample lengths the mmtune runs are measured with."""
    cfg, model, peer, tokenizer, encoded = peer_and_data(args, workdir)
    write_lengths(workdir, encoded, FlopModel.of_llm(model.llm.config))
    batch = encoded[:args.batch_size]
    ours, theirs = fixed_batch_losses(cfg, model, tokenizer, copy.deepcopy(peer), [s for s, _ in batch],
                                      hf_examples(batch))
    return (f"same batch of {len(batch)} samples, same initial weights: mmtune loss {ours:.6f}, "
            f"transformers loss {theirs:.6f}, |difference| {abs(ours - theirs):.2e}")


def prepare(args: argparse.Namespace, workdir: Path) -> None:
    alpaca_shards(Path(args.data), workdir / "shards", args.samples, args.seed)


BENCH = Bench(script="text_sft", title="Text SFT throughput: mmtune vs the Hugging Face way",
              report_name=lambda args: "text_sft",
              config={"template": TEMPLATE, "loss": "assistant only"}, runs=RUNS, baseline=BASELINE,
              prepare=prepare, prepared=lambda workdir: bool(shards_of(workdir)), loss_check=loss_check)


def main() -> None:
    args = parse()
    if args.child:
        return child(args)
    kinds, notes = args.runs.split(","), []
    if any(k.startswith("trl") for k in kinds) and version_of("trl") is None:
        notes.append("TRL: skipped, `trl` is not importable here "
                     "(.venv/bin/pip install -e '.[bench]' -c requirements/lock.txt)")
        kinds = [k for k in kinds if not k.startswith("trl")]
    run_parent(BENCH, args, kinds, notes)


if __name__ == "__main__":
    main()
