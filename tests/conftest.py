"""Shared fixtures. Tests never reach a model hub: everything loads from local directories."""
import os

os.environ["HF_HUB_OFFLINE"] = "1"
os.environ["TRANSFORMERS_OFFLINE"] = "1"

import pytest  # noqa: E402


@pytest.fixture(scope="session")
def smol_tokenizer():
    """SmolLM2-135M-Instruct's real tokenizer (byte-level BPE, ChatML chat template). Do not mutate it."""
    from transformers import AutoTokenizer

    from mmtune.models.weights import resolve

    return AutoTokenizer.from_pretrained(resolve("smollm2-135m"))
