"""mmtune: instruction tuning of language models, text-only and multimodal, from one YAML file.

    import mmtune
    cfg = mmtune.load_config("configs/text/alpaca_lora.yaml", ["train.steps=50"])
    result = mmtune.train(cfg)

Heavy libraries (transformers, open_clip, peft) are imported on first use, so the CLI starts fast.
"""
from mmtune.config import RunConfig, load_config
from mmtune.errors import ConfigError, DataError, UserError

__version__ = "0.1.0"


def train(cfg: RunConfig, resume: str | bool = False):
    """Run the configured recipe; returns the trainer's summary (final metrics, checkpoint path)."""
    from mmtune.train.trainer import train as _train

    return _train(cfg, resume=resume)


__all__ = ["RunConfig", "load_config", "train", "ConfigError", "DataError", "UserError"]
