"""Independent weight surgery: what ablating a unit must equal, done on the weights directly."""

from __future__ import annotations

import copy

import torch
from conftest import CASES
from transformers.pytorch_utils import Conv1D


def module_at(model: torch.nn.Module, path: str) -> torch.nn.Module:
    for name in path.split("."):
        model = getattr(model, name)
    return model


def zero_inputs(module: torch.nn.Module, cols: list[int], mean: torch.Tensor | None = None) -> None:
    """Make `module` behave as if input channels `cols` were 0 (or `mean[cols]`)."""
    if not cols:
        return
    idx = torch.tensor(cols)
    # Linear stores [out, in]; GPT-2's Conv1D stores [in, out].
    w = module.weight.data if isinstance(module, Conv1D) else module.weight.data.T  # [in, out]
    if mean is not None:
        shift = mean[idx] @ w[idx]
        if module.bias is None:
            module.bias = torch.nn.Parameter(torch.zeros(w.shape[1]))
        module.bias.data += shift
    w[idx] = 0


def surgery(model, name: str, circuit, only: bool = False, means=None, heads_dim=None):
    """A copy of `model` with `circuit` removed (or, with `only`, everything else removed)."""
    case = CASES[name]
    model = copy.deepcopy(model)
    cfg = model.config
    n_layers = cfg.num_hidden_layers
    n_heads = cfg.num_attention_heads
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads
    inter = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None)
    heads = set(circuit.heads)
    neurons = set(circuit.neurons)
    for i in range(n_layers):
        chosen = [h for h in range(n_heads) if ((i, h) in heads) != only]
        cols = [h * head_dim + d for h in chosen for d in range(head_dim)]
        mean = None if means is None else means["head"][i]
        zero_inputs(module_at(model, case.attn_out.format(i=i)), cols, mean)
        cols = [j for j in range(inter) if ((i, j) in neurons) != only]
        mean = None if means is None else means["neuron"][i]
        zero_inputs(module_at(model, case.mlp_out.format(i=i)), cols, mean)
    return model


def logits(model, batch) -> torch.Tensor:
    with torch.no_grad():
        return model(**batch).logits
