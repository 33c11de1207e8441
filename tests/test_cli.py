"""The command line: user errors print one line naming the problem and exit 2, never a traceback."""
import subprocess
import sys

import pytest

from mmtune.cli import main
from tests.helpers import write_text_shards


def _fails(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    lines = [l for l in err.replace("\r", "\n").splitlines() if l.startswith("error: ")]
    assert len(lines) == 1 and "Traceback" not in err, err
    assert message in lines[0], err


def test_missing_config_file(capsys, tmp_path):
    _fails(capsys, ["train", str(tmp_path / "nope.yaml")], "config file not found")


def test_unknown_override_key(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("model: {llm: 'tiny:llama'}\n")
    _fails(capsys, ["train", str(cfg), "train.setps=3"], "unknown key train.setps; did you mean train.steps?")


def test_missing_shards(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{train: [{tmp_path}/none-*.tar]}}\n")
    _fails(capsys, ["train", str(cfg)], "data.train: no shard found")


def test_unknown_tiny_model(capsys, tmp_path):
    shards = write_text_shards(tmp_path / "d", 4)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"model: {{llm: 'tiny:nonesuch'}}\ndata: {{train: {shards}}}\ntrain: {{out_dir: {tmp_path}/r}}\n")
    _fails(capsys, ["train", str(cfg)], "tiny:nonesuch")


def test_truncated_shard_is_named(capsys, tmp_path):
    shards = write_text_shards(tmp_path / "d", 20, shard_size=20)
    data = open(shards[0], "rb").read()
    open(shards[0], "wb").write(data[: len(data) // 2])
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{train: {shards}}}\ntrain: {{out_dir: {tmp_path}/r, steps: 2}}\n")
    _fails(capsys, ["train", str(cfg)], "train-000000.tar: truncated or corrupt tar")


def test_build_data_missing_input(capsys, tmp_path):
    _fails(capsys, ["build-data", "alpaca", "--input", str(tmp_path / "x.json"), "--out", str(tmp_path / "o")],
           "x.json")


@pytest.mark.parametrize("flag", ["--train-samples", "--eval-samples"])
def test_demo_needs_samples(capsys, tmp_path, flag):
    _fails(capsys, ["demo", "--out", str(tmp_path), flag, "0"], f"{flag}: must be at least 1, got 0")


def test_chat_on_a_directory_without_checkpoints(capsys, tmp_path):
    _fails(capsys, ["chat", "--ckpt", str(tmp_path), "--prompt", "hi"], "no checkpoints")


def test_console_script_exit_code_and_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "mmtune.cli", "train", str(tmp_path / "nope.yaml")],
                          capture_output=True, text=True)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "config file not found" in proc.stderr


@pytest.mark.parametrize("argv", [["--help"], ["train", "--help"], ["build-data", "--help"], ["chat", "--help"]])
def test_help(argv, capsys):
    with pytest.raises(SystemExit) as e:
        main(argv)
    assert e.value.code == 0


@pytest.mark.parametrize("override, message", [
    ("data.template=chatm", "data.template: unknown name 'chatm'; did you mean chatml?"),
    ("train.objective=sftt", "train.objective: unknown name 'sftt'; did you mean sft?"),
    ("model.llm=smolm2-135m", "model.llm: no such model 'smolm2-135m'"),
])
def test_registry_names_fail_at_load_time_even_with_workers(capsys, tmp_path, override, message):
    """Checked when the recipe loads: one line, not a DataLoader worker's traceback at the first sample."""
    shards = write_text_shards(tmp_path / "d", 8)
    cfg = tmp_path / "c.yaml"
    cfg.write_text(f"data: {{train: {shards}, num_workers: 2}}\ntrain: {{out_dir: {tmp_path}/r}}\n")
    _fails(capsys, ["train", str(cfg), override], message)
    assert not (tmp_path / "r").exists()  # nothing was started


def test_names_from_other_trainers_are_understood(capsys, tmp_path):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("train: {max_steps: 10}\n")
    _fails(capsys, ["train", str(cfg)], "unknown key train.max_steps; did you mean train.steps?")
