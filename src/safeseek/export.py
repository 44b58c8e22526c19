"""Weight surgery: a plain Hugging Face checkpoint with a circuit removed.

Zero ablation zeroes the input columns a unit owns in the projection it feeds (head h: columns
`[h*head_dim, (h+1)*head_dim)` of the attention output projection; neuron j: column j of the
MLP down projection; a whole block: that projection's weight and bias). Mean ablation also
folds the unit's reference mean into the projection's bias, `b += W[:, cols] @ mean[cols]`,
which needs the projection to have a bias. The result loads with `from_pretrained` anywhere,
with no SafeSeek installed, and its logits equal `MaskedModel.without(circuit)`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from safeseek.circuit import Circuit
from safeseek.errors import SafeSeekError
from safeseek.fileio import write_checkpoint
from safeseek.models.adapters import locate, unwrap


def _weight_in_out(module: nn.Module) -> torch.Tensor:
    """The weight as `[in, out]` (a view: writes go to the module)."""
    return module.weight.data if isinstance(module, Conv1D) else module.weight.data.T


@torch.no_grad()
def _remove_inputs(module: nn.Module, cols: list[int], mean: torch.Tensor | None) -> None:
    if not cols:
        return
    idx = torch.tensor(cols, device=module.weight.device)
    w = _weight_in_out(module)
    if mean is not None:
        if module.bias is None:
            raise SafeSeekError(
                f"mean ablation folds means into a bias, and this model's "
                f"{type(module).__name__} projections have none; export with zero ablation"
            )
        module.bias.data += (mean.to(w.dtype)[idx] @ w[idx]).to(module.bias.dtype)
    w[idx] = 0


@torch.no_grad()
def remove_circuit(
    model: nn.Module, circuit: Circuit, means: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """A copy of `model` with `circuit` surgically removed (mean ablation when `means`)."""
    circuit.check(model)
    edited = copy.deepcopy(unwrap(model))
    parts = locate(edited)
    hd = parts.arch.head_dim
    for layer in range(parts.arch.n_layers):
        heads = [h for l_, h in circuit.heads if l_ == layer]
        cols = [h * hd + d for h in heads for d in range(hd)]
        mean = means["head"][layer] if means else None
        _remove_inputs(parts.attn_out[layer], cols, mean)
        cols = [j for l_, j in circuit.neurons if l_ == layer]
        mean = means["neuron"][layer] if means else None
        _remove_inputs(parts.mlp_out[layer], cols, mean)
    for layer, part in circuit.layers:
        module = (parts.attn_out if part == "attn" else parts.mlp_out)[layer]
        if means:
            if module.bias is None:
                raise SafeSeekError("mean ablation of a whole block needs a bias to hold it")
            module.bias.data.copy_(means["layer"][layer, 0 if part == "attn" else 1])
        elif module.bias is not None:
            module.bias.data.zero_()
        module.weight.data.zero_()
    return edited


def export(
    model: nn.Module,
    tokenizer: Any,
    circuit: Circuit,
    out: str | Path,
    means: dict[str, torch.Tensor] | None = None,
) -> Path:
    """Write the edited model, its tokenizer and a provenance file to `out`, atomically."""
    provenance = {
        "removed": circuit.counts(),
        "ablation": "mean" if means else "zero",
        "circuit_metadata": circuit.metadata,
    }
    edited = remove_circuit(model, circuit, means)
    return write_checkpoint(edited, tokenizer, out, provenance, "safeseek_export.json")
