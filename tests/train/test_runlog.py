"""train.report_to: TensorBoard gets every metrics.jsonl record (scalars, sample generations as text), a resume
drops the events past its checkpoint as it drops metrics lines, and a tracker that is not installed is refused."""
import importlib.util
import json

import pytest

import mmtune
from mmtune.config import ConfigError
from mmtune.train.runlog import RunLog
from tests.helpers import tiny_config, write_text_shards

pytest.importorskip("tensorboard")
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator  # noqa: E402


def _events(run_dir) -> EventAccumulator:
    events = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
    events.Reload()
    return events


def _scalar(events: EventAccumulator, tag: str) -> dict[int, float]:
    return {e.step: e.value for e in events.Scalars(tag)}


def test_tensorboard_has_the_loss_at_every_logged_step_and_the_samples(tmp_path):
    shards = write_text_shards(tmp_path / "d", 16)
    evals = write_text_shards(tmp_path / "d", 8, prefix="eval")
    cfg = tiny_config(tmp_path / "run", shards, f"data.eval={evals}", "train.report_to=[tensorboard]",
                      "train.log_every=1", "train.sample_prompts=[hello there]")
    mmtune.finetune(cfg)
    records = [json.loads(l) for l in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    events = _events(tmp_path / "run")
    logged = {r["step"]: r for r in records if "loss" in r}
    assert sorted(logged) == [1, 2, 3, 4]
    for tag in ("loss", "lr", "grad_norm", "tokens_per_s"):
        assert _scalar(events, tag) == pytest.approx({step: r[tag] for step, r in logged.items()}, rel=1e-6)
    assert _scalar(events, "eval_loss") == pytest.approx({r["step"]: r["eval_loss"] for r in records
                                                         if "eval_loss" in r}, rel=1e-6)
    texts = {e.step: e.tensor_proto.string_val[0].decode() for e in events.Tensors("generations/text_summary")}
    assert sorted(texts) == [0, 4]
    assert f"| hello there | {records[-1]['generations'][0]['answer']} |" in texts[4]


def test_resume_drops_the_events_past_its_checkpoint(tmp_path):
    first = RunLog(tmp_path, resume_step=None, report_to=["tensorboard"])
    for step in (1, 2, 3):
        first.metric({"step": step, "loss": float(step)})
    first.close()
    resumed = RunLog(tmp_path, resume_step=2, report_to=["tensorboard"])
    resumed.metric({"step": 3, "loss": 30.0})
    resumed.close()
    assert _scalar(_events(tmp_path), "loss") == {1: 1.0, 2: 2.0, 3: 30.0}
    fresh = RunLog(tmp_path, resume_step=None, report_to=["tensorboard"])
    fresh.metric({"step": 1, "loss": 5.0})
    fresh.close()
    assert _scalar(_events(tmp_path), "loss") == {1: 5.0}


@pytest.mark.skipif(importlib.util.find_spec("wandb") is not None, reason="wandb is installed here")
def test_a_tracker_that_is_not_installed_is_refused_at_load(tmp_path):
    with pytest.raises(ConfigError, match=r"train.report_to names wandb, which is not installed \(pip install"):
        tiny_config(tmp_path / "run", ["x.tar"], "train.report_to=[tensorboard, wandb]")
