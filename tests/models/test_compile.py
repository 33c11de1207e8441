"""train.compile: every decoder layer is compiled, and a training step gives the eager loss and gradients, packed
rows included (their block-diagonal mask goes through the compiled layers)."""
import pytest
import torch

from mmtune.models.fusion import decoder_layers
from mmtune.models.objectives import sft
from tests.models.test_multimodal_lm import _batch, _model


def _step(compiled: bool):
    model, tok = _model("tiny:llama", "tuning.llm=full", f"train.compile={compiled}")
    model.train()
    loss = sft(model, _batch(model, tok, packed=True)).loss_sum
    loss.backward()
    return model, float(loss.detach()), {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def test_compiled_layers_train_like_eager_ones():
    model, loss, grads = _step(True)
    assert all(layer._compiled_call_impl is not None for layer in decoder_layers(model.llm))
    _, eager_loss, eager_grads = _step(False)
    assert loss == pytest.approx(eager_loss, abs=1e-5)
    assert grads.keys() == eager_grads.keys() and any(n.startswith("llm.") for n in grads)
    for name, grad in grads.items():
        torch.testing.assert_close(grad, eager_grads[name], atol=1e-5, rtol=1e-4, msg=name)
