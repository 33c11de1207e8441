"""Cross-entropy of the LM head at the supervised positions, a chunk of rows at a time, so the [K, V] logits never
exist at once.

For a plain linear head the loss is a sum over rows, so each chunk's gradients (softmax minus the one-hot target,
times the head's weight or the chunk's hidden states) are final as soon as the chunk is scored: they are computed
right there, the chunk's logits are dropped, and the backward pass only scales them by the incoming gradient. Same
loss and gradients as F.cross_entropy over the whole logits, no softmax or log-softmax tensor of [K, V] kept for the
backward pass, and each logit read a few times instead of written and read by four separate passes. On SmolLM2
(K ~ 2,000 supervised tokens of 4,096, V = 49,152) each of those [K, V] fp32 tensors is ~0.4 GB.

Only a head that is a plain nn.Linear over whole tensors qualifies (`fusable`), and only where its weight is still
whole after the forward pass; MultimodalLM calls any other (LoRA or modules_to_save on the head; FSDP2 and ZeRO-3,
which gather sharded weights only inside the forward, `head_whole_after_forward`) as a module in its forward pass.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

CHUNK_ELEMENTS = 2**25
"""Logits per chunk (128 MiB in fp32): rows = CHUNK_ELEMENTS // vocabulary, 682 rows for a 49,152-way head (the
head's GEMMs ran ~10% faster than at 341 rows; 1,024 and 2,048 gained nothing more)."""


def head_loss_sum(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """Summed cross-entropy of head(hidden) [K, V] against targets [K] (every target a real class), in fp32; `head`
    must be `fusable`."""
    if torch.is_grad_enabled() and (hidden.requires_grad or any(p.requires_grad for p in head.parameters())):
        return _LinearCrossEntropy.apply(hidden, head.weight, head.bias, targets)
    return _chunks(hidden, head.weight, head.bias, targets, (False, False, False))[0]


def head_token_losses(hidden: torch.Tensor, head: nn.Linear, targets: torch.Tensor) -> torch.Tensor:
    """Per-row cross-entropy [K] of head(hidden), a chunk at a time (under autograd each chunk's logits are kept)."""
    rows = chunk_rows(head.out_features)
    return torch.cat([F.cross_entropy(head(h).float(), t, reduction="none")
                      for h, t in zip(hidden.split(rows), targets.split(rows))])


def fusable(head: nn.Module) -> bool:
    """A plain nn.Linear whose weight is a whole ordinary tensor (not a DTensor shard or an empty ZeRO-3 stub)."""
    return (type(head) is nn.Linear and type(head.weight.data) is torch.Tensor
            and head.weight.numel() == head.in_features * head.out_features)


def chunk_rows(vocabulary: int) -> int:
    return max(1, CHUNK_ELEMENTS // vocabulary)


class _LinearCrossEntropy(torch.autograd.Function):
    """Loss in the forward pass together with its gradients for a loss gradient of 1; backward scales them."""

    @staticmethod
    def forward(ctx, hidden, weight, bias, targets):
        loss, *grads = _chunks(hidden, weight, bias, targets, ctx.needs_input_grad[:3])
        ctx.save_for_backward(*(g if g is not None else torch.empty(0) for g in grads))
        ctx.present = [g is not None for g in grads]
        return loss

    @staticmethod
    def backward(ctx, grad_loss):
        grads = [g * grad_loss.to(g.dtype) if present else None
                 for g, present in zip(ctx.saved_tensors, ctx.present)]
        return (*grads, None)


def _chunks(hidden, weight, bias, targets, needs: tuple[bool, bool, bool]):
    """(summed loss, d loss/d hidden, d loss/d weight, d loss/d bias), each gradient None where not needed.

    log_softmax is one row-at-a-time kernel (a row of logits stays in cache), and the softmax is its exp in place:
    each chunk's logits cross memory four times instead of the ~eleven of logsumexp, subtract, exp and friends
    (SmolLM2, 3,400 supervised rows, one thread: 79 -> 101 GFLOP/s for the head, as fast as its three GEMMs alone)."""
    need_hidden, need_weight, need_bias = needs[0], needs[1], needs[2] and bias is not None
    grad_hidden = torch.empty_like(hidden) if need_hidden else None
    grad_weight = torch.zeros_like(weight) if need_weight else None
    grad_bias = torch.zeros_like(bias) if need_bias else None
    loss = hidden.new_zeros((), dtype=torch.float32)
    rows = chunk_rows(weight.shape[0])
    for start in range(0, hidden.shape[0], rows):
        h, t = hidden[start:start + rows], targets[start:start + rows]
        log_probs = torch.log_softmax(F.linear(h, weight, bias).float(), dim=-1)
        loss -= log_probs.gather(1, t[:, None]).sum()
        if not (need_hidden or need_weight or need_bias):
            continue
        probs = log_probs.exp_()  # softmax, in place of the log-probabilities
        probs[torch.arange(len(t), device=t.device), t] -= 1  # d loss / d logits
        probs = probs.to(h.dtype)
        if need_hidden:
            grad_hidden[start:start + rows] = probs @ weight
        if need_weight:
            _accumulate_product(grad_weight, probs.T, h)
        if need_bias:
            grad_bias += probs.sum(0)
    return loss, grad_hidden, grad_weight, grad_bias


def _accumulate_product(total: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> None:
    """total += a @ b, inside the GEMM where the types allow (no [V, H] temporary per chunk); under autocast the
    product is bf16 and the total fp32, so it is added."""
    if a.dtype == total.dtype and not torch.is_autocast_enabled(total.device.type):
        total.addmm_(a, b)
    else:
        total += a @ b
