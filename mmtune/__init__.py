"""mmtune: instruction tuning of language models, text-only and multimodal, from one YAML file.

    import mmtune
    cfg = mmtune.load_config("configs/text/alpaca_smollm2_lora.yaml", ["train.steps=50"])  # names checked too
    result = mmtune.finetune(cfg)

(`finetune`, not `train`: `mmtune.train` is the package holding the loop.)
Heavy libraries (transformers, open_clip, peft) are imported on first use, so the CLI starts fast.
"""
from mmtune.config import RunConfig
from mmtune.errors import ConfigError, DataError, UserError
from mmtune.recipe import load_recipe as load_config

__version__ = "0.1.0"


def finetune(cfg: RunConfig, resume: str | bool = False, callbacks: list | None = None) -> dict:
    """Run the configured recipe, exactly as `mmtune train` does; returns the run summary (checkpoint path,
    loss-curve path, skip counts). `resume`: False, True (newest checkpoint of train.out_dir) or a path."""
    from mmtune.train.trainer import train

    return train(cfg, resume=resume, callbacks=callbacks)


__all__ = ["RunConfig", "load_config", "finetune", "ConfigError", "DataError", "UserError"]
