import pytest
import torch

from mmtune.config import load_config
from mmtune.models.build import build_model
from tests.helpers import VLM


@pytest.fixture(scope="package")
def vlm():
    """(model, tokenizer, cfg): a tiny VLM whose weights are spread out (randn * 0.1) so its greedy answers are
    varied words, not one special token."""
    cfg = load_config(None, ["model.llm=tiny:llama", *VLM])
    model, tokenizer = build_model(cfg)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn(p.shape, generator=gen) * 0.1)
    return model.eval(), tokenizer, cfg
