"""One trainer on two processes (CPU, gloo): DDP, FSDP2 and DeepSpeed ZeRO-2/3 train exactly like one process with
the global batch, on a tiny multimodal model (LoRA on the LLM, the bridge fully tuned) whose ranks often hold a
text-only micro-batch while the other has images; their checkpoints (ZeRO-3 and FSDP2 included) hold complete
weights and adapters; a SIGKILLed 2-rank run resumes bit-identically; 2 ranks x 2 workers read every sample once."""
import importlib.util
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mmtune.config import load_config
from mmtune.data.shards import ShardSink
from mmtune.errors import ConfigError
from tests.helpers import image_sample, text_sample
from tests.train.dist_run import probe_batch, train_and_probe

ROOT = Path(__file__).resolve().parents[2]
STEPS, SAMPLES = 6, 48  # 6 steps x (2 ranks x batch 2 x accum 2) = one epoch
ENGINES = {"ddp": {"name": "ddp"}, "fsdp": {"name": "fsdp"},
           "zero2": {"name": "deepspeed", "args": {"stage": 2}}, "zero3": {"name": "deepspeed", "args": {"stage": 3}}}
RECIPE = {
    "model": {"llm": "tiny:llama", "encoder": {"name": "clip", "args": {"arch": "mmtune-vit-tiny"}},
              "bridge": {"name": "mlp2x_gelu"}},
    "tuning": {"llm": "lora", "bridge": "full", "lora": {"r": 4, "alpha": 8, "dropout": 0.0}},
    "data": {"template": "chatml", "max_len": 160, "group_by_length": False, "shuffle_buffer": 16, "num_workers": 2},
    "train": {"steps": STEPS, "batch_size": 2, "grad_accum": 2, "lr": 1e-3, "warmup": 2, "log_every": 1,
              "save_every": 1, "keep_last": 2, "eval_every": 1000},
}


def _needs(engine: str) -> None:
    if ENGINES[engine]["name"] == "deepspeed" and importlib.util.find_spec("deepspeed") is None:
        pytest.skip("deepspeed is not installed (pip install -e .[distributed])")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A third of the samples text-only, the rest with one image; returns (shards, ids with images)."""
    import random

    out, rng = tmp_path_factory.mktemp("data"), random.Random(0)
    with ShardSink(out, "train", maxcount=16) as sink:
        samples = [text_sample(i, rng) if i % 3 == 0 else image_sample(i, rng) for i in range(SAMPLES)]
        for s in samples:
            sink.write(s)
    return sorted(str(p) for p in out.glob("train-*.tar")), {s.id for s in samples if s.media}


def _recipe(path: Path, shards: list[str], engine: dict) -> Path:
    recipe = {**RECIPE, "data": {**RECIPE["data"], "train": shards},
              "train": {**RECIPE["train"], "out_dir": str(path.with_suffix("")), "engine": engine}}
    path.write_text(yaml.safe_dump(recipe))
    return path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(config: Path, *argv: str, kill_at_step: int | None = None, torchrun: bool = True,
            launcher: list[str] | None = None) -> None:
    """`python [torchrun with 2 processes] argv` (or `launcher argv`); SIGKILL the whole process group once
    checkpoint `kill_at_step` exists."""
    torchrun_args = ["-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(_free_port())]
    cmd = launcher + list(argv) if launcher else [sys.executable, *(torchrun_args if torchrun else []), *argv]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)
           + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen(cmd, env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    if kill_at_step is None:
        _, err = proc.communicate(timeout=400)
        assert proc.returncode == 0, err[-3000:]
        return
    marker = config.with_suffix("") / "checkpoints" / f"step-{kill_at_step:06d}"
    deadline = time.time() + 400
    while not marker.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed"


def _history(run_dir: Path):
    losses = [r["loss"] for r in map(json.loads, (run_dir / "metrics.jsonl").read_text().splitlines()) if "loss" in r]
    order = [r["ids"] for r in map(json.loads, (run_dir / "samples.jsonl").read_text().splitlines())]
    return losses, order


@pytest.fixture(scope="module")
def runs(tmp_path_factory, data):
    """Run directories by name, each trained once on first use: 'single' (1 process, batch 4) and the engines."""
    root, done = tmp_path_factory.mktemp("runs"), {}

    def get(name: str) -> Path:
        if name not in done:
            config = _recipe(root / f"{name}.yaml", data[0], ENGINES.get(name, {"name": "single"}))
            if name == "single":
                train_and_probe(load_config(config, ["train.batch_size=4"]))
            else:
                _launch(config, "-m", "tests.train.dist_run", str(config))
            done[name] = config.with_suffix("")
        return done[name]

    return get


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_two_ranks_train_like_one_process_with_the_global_batch(runs, data, engine):
    _needs(engine)
    single_loss, single_order = _history(runs("single"))
    loss, order = _history(runs(engine))
    assert len(loss) == STEPS and max(abs(a - b) for a, b in zip(loss, single_loss)) < 1e-5
    assert [sorted(ids) for ids in order] == [sorted(ids) for ids in single_order]
    with_images = data[1]
    # samples.jsonl lists rank 0's ids, then rank 1's; each rank's 4 ids are 2 micro-batches of 2.
    mixed = [step for step in order for m in (0, 2) if {not (set(step[m:m + 2]) & with_images),
                                                          not (set(step[4 + m:6 + m]) & with_images)} == {True, False}]
    assert mixed, "no step had a text-only micro-batch on one rank and images on the other"


def _fresh_model_with_adapter(ckpt: Path):
    """A newly built model (same seed: same frozen base) with only the adapter/ and the bridge loaded."""
    from peft import set_peft_model_state_dict

    from mmtune.models.build import build_model

    cfg = load_config(ckpt / "config.yaml")
    model, tokenizer = build_model(cfg)
    adapter = load_file(str(ckpt / "adapter" / "adapter_model.safetensors"))
    lora = [n for n, p in model.llm.named_parameters() if "lora_" in n]
    assert len(adapter) == len(lora) and all(t.numel() > 0 for t in adapter.values())  # complete, not partitions
    assert any(bool(t.abs().sum() > 0) for n, t in adapter.items() if "lora_B" in n)  # trained (B starts at 0)
    set_peft_model_state_dict(model.llm, adapter)
    prefix = "media.image.bridge."
    bridge = {k[len(prefix):]: v for k, v in load_file(str(ckpt / "model.safetensors")).items()
              if k.startswith(prefix)}
    model.media["image"].bridge.load_state_dict(bridge)
    return model.eval(), tokenizer, cfg


@pytest.mark.slow
@pytest.mark.parametrize("engine", sorted(ENGINES))
def test_saved_checkpoint_and_adapter_give_the_trained_models_logits(runs, engine):
    _needs(engine)
    from mmtune.infer.generate import load_checkpoint

    run = runs(engine)
    trained = torch.load(run / "probe_logits.pt")
    ckpt = run / "checkpoints" / f"step-{STEPS:06d}"
    for model, tokenizer, cfg in (load_checkpoint(ckpt), _fresh_model_with_adapter(ckpt)):
        with torch.no_grad():
            logits = model(probe_batch(cfg, model, tokenizer)).logits
        torch.testing.assert_close(logits, trained, atol=1e-5, rtol=0)


@pytest.mark.slow
def test_two_ranks_with_two_workers_read_every_sample_once_per_epoch(runs):
    _, order = _history(runs("ddp"))
    ids = [i for step in order for i in step]
    assert sorted(ids) == [f"s{i:05d}" for i in range(SAMPLES)]


@pytest.mark.slow
@pytest.mark.parametrize("engine", ["ddp", "zero2"])
def test_sigkill_and_resume_on_two_ranks_matches_the_uninterrupted_run(runs, data, tmp_path, engine):
    _needs(engine)
    config = _recipe(tmp_path / "killed.yaml", data[0], ENGINES[engine])
    _launch(config, "-m", "mmtune.cli", "train", str(config), kill_at_step=3)
    assert not (tmp_path / "killed" / "checkpoints" / f"step-{STEPS:06d}").exists()
    _launch(config, "-m", "mmtune.cli", "train", str(config), "--resume", "--nproc", "2", torchrun=False)
    assert _history(tmp_path / "killed") == _history(runs(engine))  # bit-identical losses, same ids per step


@pytest.mark.slow
def test_resuming_on_another_world_size_is_refused(runs, tmp_path):
    import mmtune

    ckpt = runs("ddp") / "checkpoints" / f"step-{STEPS - 1:06d}"
    cfg = load_config(ckpt / "config.yaml", [f"train.out_dir={tmp_path}", "train.engine.name=single"])
    with pytest.raises(ConfigError, match=r"written by 2 process\(es\), this run has 1; .* resume with 2"):
        mmtune.finetune(cfg, resume=str(ckpt))


@pytest.mark.slow
def test_the_deepspeed_launcher_trains_like_torchrun(runs, data, tmp_path):
    """`deepspeed --num_gpus 2 --module mmtune.cli train ...` (CPU, gloo): the same losses as the torchrun run."""
    _needs("zero2")
    config = _recipe(tmp_path / "launched.yaml", data[0], ENGINES["zero2"])
    deepspeed = [str(Path(sys.executable).parent / "deepspeed"), "--no_local_rank", "--num_gpus", "2",
                 "--master_port", str(_free_port()), "--module"]
    _launch(config, "mmtune.cli", "train", str(config), launcher=deepspeed)
    launched, reference = _history(config.with_suffix(""))[0], _history(runs("zero2"))[0]
    assert launched == pytest.approx(reference, abs=1e-5)


def test_slurm_example_is_valid_bash():
    script = ROOT / "configs" / "slurm_torchrun.sbatch"
    assert shutil.which("bash") and "torchrun" in script.read_text()
    subprocess.run(["bash", "-n", str(script)], check=True)
