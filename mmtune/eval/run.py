"""`mmtune eval --ckpt DIR --task TASK --data PATH`: score a checkpoint, or dump its answers for a judge.

Tasks: `vqa` (exact match after VQA answer normalisation), `choice` (option letter extracted from the answer),
`rouge` (ROUGE-L F1 of free-form answers), `loss` (held-out loss and perplexity on shards), `mtbench` (FastChat
answer JSONL for MT-bench's question.jsonl) and `edit` (an image editor's edits of held-out triplets: PSNR against
the target next to the unchanged input's, the changed region, CLIP directional similarity; see eval/edit.py).
Each writes results.json and results.md (a markdown table) into --out, with predictions.jsonl (or the MT-bench
answer file; `edit`: the edited images too) beside them. The command line builds its parser from this
module, so torch and transformers are imported only when a command runs.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from mmtune.errors import DataError

DEFAULT_MAX_NEW_TOKENS = {"vqa": 16, "choice": 16, "rouge": 256, "mtbench": 1024}
"""Answer lengths the tasks need: a word or a letter, a paragraph, MT-bench's own limit (FastChat: 1024)."""
TASKS = (*DEFAULT_MAX_NEW_TOKENS, "loss", "edit")


def evaluate_checkpoint(ckpt: str | Path, task: str, data: str | list[str], out: str | Path | None = None, *,
                        batch_size: int = 64, max_new_tokens: int | None = None, limit: int | None = None,
                        on_error: str = "raise", model_id: str | None = None, sampling=None, clip_arch: str = "",
                        clip_weights: str = "") -> dict:
    """Load the checkpoint, run `task` on `data`, and return (and, given `out`, write) the results. `edit` takes
    the sampler's settings (`eval.edit.Sampling`) and an optional open_clip model for directional similarity."""
    from mmtune.infer.generate import load_checkpoint

    if task not in TASKS:
        raise DataError(f"--task: unknown task {task!r}; choose one of {', '.join(TASKS)}")
    model, tokenizer, cfg = load_checkpoint(ckpt)
    out = Path(out) if out is not None else None
    new_tokens = max_new_tokens or DEFAULT_MAX_NEW_TOKENS.get(task)

    def answer(conversations, images=None) -> list[str]:
        return _generate_in_batches(model, tokenizer, cfg, conversations, images, batch_size, new_tokens)

    if task == "loss":
        from mmtune.data.shards import expand_shards
        from mmtune.eval.loss import heldout_loss

        shards = expand_shards([data] if isinstance(data, str) else data, "--data")
        result = heldout_loss(model, tokenizer, cfg, shards, max_batches=limit)
    elif task == "edit":
        from mmtune.eval.edit import edit_task

        result = edit_task(model, tokenizer, cfg, data, out, limit=limit, on_error=on_error, sampling=sampling,
                           clip_arch=clip_arch, clip_weights=clip_weights)
    elif task == "mtbench":
        result = _mtbench(answer, Path(data), out, model_id or Path(ckpt).resolve().name, limit)
    else:
        result = _scored(task, answer, data, out, limit, on_error)
    result = {"task": task, "checkpoint": str(ckpt), "data": data, **result}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(result, indent=1) + "\n")
        (out / "results.md").write_text(markdown_table(result))
    return result


def _generate_in_batches(model, tokenizer, cfg, conversations, images, batch_size, max_new_tokens) -> list[str]:
    from mmtune.infer.generate import generate

    answers = []
    for i in range(0, len(conversations), batch_size):
        chunk_images = images[i:i + batch_size] if images else None
        answers += generate(model, tokenizer, cfg, conversations[i:i + batch_size], chunk_images,
                            max_new_tokens=max_new_tokens)
    return answers


def _scored(task, answer, data, out, limit, on_error) -> dict:
    from mmtune.eval.choice import choice_accuracy, reference_letter
    from mmtune.eval.items import load_items
    from mmtune.eval.rouge import mean_rouge_l
    from mmtune.eval.vqa import accuracy

    loaded = load_items(data, on_error=on_error)
    items = loaded.items[:limit]
    if not items:
        raise DataError(f"--data: no question to score in {data} ({dict(loaded.counts) or 'empty'})")
    preds = answer([it.messages for it in items], [it.images for it in items])
    refs = [it.answer for it in items]
    tasks = [it.task for it in items] if any(it.task for it in items) else None
    if task == "vqa":
        metrics = accuracy(preds, refs, tasks)
    elif task == "choice":
        refs = [reference_letter(it.answer, it.choices, it.where) for it in items]
        metrics = choice_accuracy(preds, refs, [it.choices for it in items], tasks)
    else:
        metrics = {"rouge_l": mean_rouge_l(preds, refs)}
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "predictions.jsonl", "w") as f:
            for it, pred, ref in zip(items, preds, refs):
                f.write(json.dumps({"id": it.id, "task": it.task, "prediction": pred, "reference": ref}) + "\n")
    return {**metrics, "counts": dict(loaded.counts)}


def _mtbench(answer, questions_path: Path, out: Path | None, model_id: str, limit: int | None) -> dict:
    from mmtune.eval.mtbench import answer_turns, read_questions, write_answers

    questions = read_questions(questions_path)[:limit]
    if not questions:
        raise DataError(f"--data: no question in {questions_path}")
    answers = answer_turns(questions, answer)
    result = {"questions": len(questions), "turns": sum(len(a) for a in answers), "model_id": model_id}
    if out is not None:
        result["answers"] = str(write_answers(out / f"{model_id}.jsonl", questions, answers, model_id))
    return result


def markdown_table(result: dict) -> str:
    """The numbers of a result as a two-column markdown table (per-task scores as `<metric>/<task>` rows)."""
    rows = [(k, v) for k, v in result.items() if isinstance(v, (int, float)) and not isinstance(v, bool)]
    rows += [(f"rouge_l/{k}", v) for k, v in result.get("rouge_l", {}).items()]
    rows += [(f"{k}/{t}", v) for t, s in result.get("per_task", {}).items() for k, v in s.items()
             if isinstance(v, float)]
    rows += [(k, v) for k, v in result.get("counts", {}).items()]
    lines = [f"`mmtune eval --task {result['task']}` on {result['data']} ({result['checkpoint']})", "",
             "| metric | value |", "|---|---|"]
    lines += [f"| {k} | {v:.4f} |" if isinstance(v, float) else f"| {k} | {v} |" for k, v in rows]
    return "\n".join(lines) + "\n"


# ---- command line: `mmtune eval` ----

def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--ckpt", required=True, help="checkpoint directory or run directory (newest checkpoint)")
    parser.add_argument("--task", required=True, choices=TASKS)
    parser.add_argument("--data", required=True, nargs="+",
                        help="questions: a .jsonl file (see mmtune/eval/items.py) or shards; loss, edit: shards; "
                             "mtbench: FastChat's question.jsonl")
    parser.add_argument("--out", help="directory for results.json, results.md and the predictions")
    parser.add_argument("--batch-size", type=int, default=64, help="prompts generated together")
    parser.add_argument("--max-new-tokens", type=int,
                        help=f"answer length (default per task: {DEFAULT_MAX_NEW_TOKENS})")
    parser.add_argument("--limit", type=int, help="score only the first N questions (loss: N batches)")
    parser.add_argument("--on-error", choices=["raise", "skip"], default="raise",
                        help="a bad record stops the run (naming file, line and field) or is skipped and counted")
    parser.add_argument("--model-id", help="mtbench: the model name in the answer file (default: checkpoint name)")
    from mmtune.infer.edit import add_sampling_arguments

    edit = parser.add_argument_group("edit", "the sampler (as `mmtune edit`) and CLIP directional similarity")
    add_sampling_arguments(edit)
    edit.add_argument("--clip-arch", default="",
                      help="open_clip architecture for CLIP directional similarity (needs captions.json in the "
                           "samples); none: not computed")
    edit.add_argument("--clip-weights", default="", help="local weights file for --clip-arch (default: random init)")


def run(args: argparse.Namespace) -> int:
    from mmtune.eval.edit import Sampling

    data = args.data[0] if len(args.data) == 1 else args.data
    result = evaluate_checkpoint(args.ckpt, args.task, data, args.out, batch_size=args.batch_size,
                                 max_new_tokens=args.max_new_tokens, limit=args.limit, on_error=args.on_error,
                                 model_id=args.model_id, sampling=Sampling.from_args(args), clip_arch=args.clip_arch,
                                 clip_weights=args.clip_weights)
    print(markdown_table(result), end="")
    if args.out:
        print(f"results: {Path(args.out) / 'results.json'}")
    return 0
