"""Useful training FLOPs and the matmul ceiling they are compared with, for text_sft.py and vlm_sft.py.

Useful FLOPs of a training step are counted from the model config, on real positions only (padding is waste), with
no recomputation (activation checkpointing's second forward pass is not useful work). A sample of L positions whose
LM head is computed at S of them costs, with 2 FLOPs per multiply-add and the backward pass twice the forward:

    6 * N * L                                  N: weights of every decoder layer's q, k, v, o, gate, up, down
  + 6 * layers * heads * head_dim * L * (L+1)  causal attention: L(L+1)/2 query-key pairs, in QK^T and in PV
  + 6 * hidden * vocabulary * S                LM head: S = supervised positions for mmtune (sparse head), all
                                               L for the Trainer (it computes every logit)

and each image (vlm_sft.py) adds the frozen tower's forward up to the layer used and the trained projector:

    2 * N_tower * P + 4 * layers_used * width * P^2 + 6 * N_bridge * M
                                               P = patches + CLS (full attention), M = the image's LLM positions

The ceiling is fp32 matmuls of the model's own shapes ([batch x max_len] x hidden x intermediate, both ways) and
1024-square, timed best-of-5 in a child process with the runs' thread count; the fastest is the ceiling. Beside it
the child times the decoder layers' GEMMs alone as a step runs them (every layer's seven linear maps forward, then
their input and weight gradients backward, over distinct weights and activations): the rate a step's linear work
gets from the BLAS when nothing else takes any time, which bounds the fraction of the ceiling a step can reach.

    python -m bench.flops --threads 2 --shapes 4096x576x1536,1024x1024x1024 --out gemm.json \
        [--layers flops.json --tokens 4096]
"""
from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

GEMM_REPEATS = 5
SQUARE = (1024, 1024, 1024)
LAYER_INPUTS = (0, 0, 0, 1, 2, 2, 3)
"""Which of a decoder layer's four inputs each map of `FlopModel.layer_maps` reads: q, k and v the attention input,
o the attention output, gate and up the MLP input, down the gated product."""


@dataclass
class FlopModel:
    linear: int
    """Weights of the decoder layers' linear maps, all layers."""
    layers: int
    attention_width: int
    """heads x head_dim of the queries."""
    kv_width: int
    """key_value_heads x head_dim of the keys and values."""
    hidden: int
    intermediate: int
    vocabulary: int
    image: float = 0.0
    """FLOPs per image (tower forward and projector training), 0 for text."""

    @classmethod
    def of_llm(cls, config) -> FlopModel:
        """From a llama-family config (q/k/v/o attention projections, gated MLP)."""
        heads, kv_heads = config.num_attention_heads, config.num_key_value_heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        hidden, inner = config.hidden_size, config.intermediate_size
        per_layer = 2 * hidden * heads * head_dim + 2 * hidden * kv_heads * head_dim + 3 * hidden * inner
        return cls(per_layer * config.num_hidden_layers, config.num_hidden_layers, heads * head_dim,
                   kv_heads * head_dim, hidden, inner, config.vocab_size)

    def sample(self, length: int, head_positions: int) -> float:
        """Training FLOPs of one sample of `length` positions, its LM head computed at `head_positions`."""
        return (6 * self.linear * length + 6 * self.layers * self.attention_width * length * (length + 1)
                + 6 * self.hidden * self.vocabulary * head_positions)

    def gemm_shapes(self, tokens: int) -> list[tuple[int, int, int]]:
        """(m, k, n) the ceiling is timed on: the MLP's matmuls both ways at a batch's tokens, and 1024-square."""
        return [(tokens, self.hidden, self.intermediate), (tokens, self.intermediate, self.hidden), SQUARE]

    def layer_maps(self) -> list[tuple[int, int]]:
        """(in, out) features of one decoder layer's linear maps: q, k, v, o, gate, up, down."""
        h, a, kv, inner = self.hidden, self.attention_width, self.kv_width, self.intermediate
        return [(h, a), (h, kv), (h, kv), (a, h), (h, inner), (h, inner), (inner, h)]

    def save(self, path: Path) -> None:
        path.write_text(json.dumps(self.__dict__))

    @classmethod
    def load(cls, path: Path) -> FlopModel:
        return cls(**json.loads(path.read_text()))


def image_flops(vision_config, layer: int, bridge_weights: int, positions: int) -> float:
    """FLOPs per image of a frozen CLIP tower (forward up to hidden state `layer`, counted like hidden_states: 0 is
    the embeddings, -1 the last layer) and a trained projector of `bridge_weights` giving `positions` LLM positions."""
    width, inner = vision_config.hidden_size, vision_config.intermediate_size
    patches = (vision_config.image_size // vision_config.patch_size) ** 2 + 1
    used = layer % (vision_config.num_hidden_layers + 1)
    tower = (4 * width * width + 2 * width * inner) * used + 3 * vision_config.patch_size ** 2 * width
    return 2 * tower * patches + 4 * used * width * patches ** 2 + 6 * bridge_weights * positions


def gemm_gflops(shapes: list[tuple[int, int, int]], threads: int) -> dict[str, float]:
    """Best-of-GEMM_REPEATS fp32 GFLOP/s of each (m, k, n) on `threads` threads."""
    import torch

    torch.set_num_threads(threads)
    out = {}
    for m, k, n in shapes:
        a, b = torch.randn(m, k), torch.randn(k, n)
        a @ b
        best = float("inf")
        for _ in range(GEMM_REPEATS):
            start = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - start)
        out[f"{m}x{k}x{n}"] = 2 * m * k * n / best / 1e9
    return out


def layer_pass_gflops(model: FlopModel, tokens: int, threads: int, repeats: int = 2) -> float:
    """Best-of-`repeats` fp32 GFLOP/s of a training step's decoder-layer GEMMs alone, at `tokens` positions: each
    layer's maps forward (outputs kept, as autograd keeps activations), then in reverse each map's input gradient
    and weight gradient, the kept output standing in for the incoming gradient. No elementwise work in between."""
    import torch

    torch.set_num_threads(threads)
    maps = model.layer_maps()
    weights = [[torch.randn(out, inp) for inp, out in maps] for _ in range(model.layers)]
    widths = {i: maps[m][0] for m, i in enumerate(LAYER_INPUTS)}
    inputs = [{i: torch.randn(tokens, width) for i, width in widths.items()} for _ in range(model.layers)]

    def step() -> None:
        kept = [[xs[i] @ w.T for i, w in zip(LAYER_INPUTS, layer)] for xs, layer in zip(inputs, weights)]
        for xs, layer, outputs in zip(reversed(inputs), reversed(weights), reversed(kept)):
            for i, w, grad in zip(LAYER_INPUTS, layer, outputs):
                grad @ w, grad.T @ xs[i]

    best = float("inf")
    for _ in range(repeats + 1):  # the first one warms up
        start = time.perf_counter()
        step()
        best = min(best, time.perf_counter() - start)
    return 6 * model.linear * tokens / best / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description="fp32 GEMM GFLOP/s of the given shapes (best of 5)")
    parser.add_argument("--threads", type=int, required=True)
    parser.add_argument("--shapes", required=True, help="comma-separated MxKxN")
    parser.add_argument("--out", required=True, help="JSON file: {shapes: shape -> GFLOP/s, layers: GFLOP/s}")
    parser.add_argument("--layers", help="a FlopModel JSON: also time its decoder layers' GEMMs (--tokens)")
    parser.add_argument("--tokens", type=int, default=4096, help="positions of a step, for --layers")
    args = parser.parse_args()
    shapes = [tuple(int(x) for x in s.split("x")) for s in args.shapes.split(",")]
    measured = {"shapes": gemm_gflops(shapes, args.threads)}
    if args.layers:
        measured["layers"] = layer_pass_gflops(FlopModel.load(Path(args.layers)), args.tokens, args.threads)
    Path(args.out).write_text(json.dumps(measured))


if __name__ == "__main__":
    main()
