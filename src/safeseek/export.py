"""Weight surgery: a plain Hugging Face checkpoint with a circuit removed.

Zero ablation zeroes the input columns a unit owns in the projection it feeds (head h: columns
`[h*head_dim, (h+1)*head_dim)` of the attention output projection; neuron j: column j of the MLP
down projection; a whole block: that projection's weight and bias; a weight unit: its entry;
`models/geometry.py`). Mean ablation also folds the unit's reference mean into the projection's
bias, `b += W[:, cols] @ mean[cols]` (a weight entry (r, c): `b[r] += W[r, c] * mean[c]`); a
projection without one gets one where the family's config can declare it (`attention_bias`,
`mlp_bias`: Llama, SmolLM2, Granite, Qwen3, Gemma, OLMo), with zeros in every bias the flag
adds. The result loads with `from_pretrained` anywhere, with no SafeSeek installed, and its
logits equal `MaskedModel.without(circuit)`.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import torch
from torch import nn
from transformers import AutoModelForCausalLM

from safeseek.circuit import Circuit
from safeseek.errors import SafeSeekError
from safeseek.fileio import write_checkpoint
from safeseek.masking import MaskedModel
from safeseek.models.adapters import locate, unwrap
from safeseek.models.geometry import (
    LAYER_PARTS,
    WEIGHT_MATRICES,
    ModelParts,
    out_in,
    site_modules,
    unit_channels,
)

# The config flag that gives a family's attention / MLP output projection a bias.
BIAS_FLAGS = {"attn": "attention_bias", "mlp": "mlp_bias"}


@torch.no_grad()
def _remove_inputs(module: nn.Module, cols: list[int], mean: torch.Tensor | None) -> None:
    if not cols:
        return
    idx = torch.tensor(cols, device=module.weight.device)
    w = out_in(module, module.weight.data).T  # [in, out], a view: writes go to the module
    if mean is not None:
        assert module.bias is not None  # see _declare_biases
        module.bias.data += (mean.to(w.dtype)[idx] @ w[idx]).to(module.bias.dtype)
    w[idx] = 0


@torch.no_grad()
def _remove_entries(module: nn.Module, entries: torch.Tensor, mean: torch.Tensor | None) -> None:
    """Zero the weight's entries at flat indices `entries` of `[out, in]`; with `mean` (per
    input channel) their share of it moves into the bias."""
    w = out_in(module, module.weight.data)  # a view: writes go to the module
    rows, cols = entries // w.shape[1], entries % w.shape[1]
    if mean is not None:
        assert module.bias is not None  # see _declare_biases
        shares = (w[rows, cols].float() * mean.float().to(w.device)[cols]).to(module.bias.dtype)
        module.bias.data.index_add_(0, rows, shares)
    w[rows, cols] = 0


@torch.no_grad()
def remove_circuit(
    model: nn.Module, circuit: Circuit, means: dict[str, torch.Tensor] | None = None
) -> nn.Module:
    """A copy of `model` with `circuit` surgically removed (mean ablation when `means`)."""
    circuit.check(model)
    edited = copy.deepcopy(unwrap(model))
    parts = locate(edited)
    if means:
        _declare_biases(edited, parts, circuit)
    for g in ("head", "neuron"):
        for layer in range(parts.arch.n_layers):
            units = [u for l_, u in circuit.units(g) if l_ == layer]
            (module,) = site_modules(parts, g, layer)
            mean = means[g][layer] if means else None
            _remove_inputs(module, unit_channels(parts.arch, g, units), mean)
    for layer, part in circuit.layers:
        index = LAYER_PARTS.index(part)
        module = site_modules(parts, "layer", layer)[index]
        if means:
            assert module.bias is not None  # see _declare_biases
            module.bias.data.copy_(means["layer"][layer, index])
        elif module.bias is not None:
            module.bias.data.zero_()
        module.weight.data.zero_()
    for (layer, part), entries in circuit.weight_entries(parts.arch).items():
        module = site_modules(parts, "weight", layer)[part]
        mean = means[WEIGHT_MATRICES[part][1]][layer] if means else None
        _remove_entries(module, entries.to(module.weight.device), mean)
    return edited


@torch.no_grad()
def _declare_biases(model: nn.Module, parts: ModelParts, circuit: Circuit) -> None:
    """Give the output projections that will hold means a bias, through the config flag that
    declares it, so that the checkpoint still loads as a plain model of its family: every bias
    the flag adds (e.g. Llama's `attention_bias` also adds q/k/v biases) starts at zero."""
    kinds = {"attn"} if circuit.heads else set()
    kinds |= {"mlp"} if circuit.neurons else set()
    kinds |= {part for _, part in circuit.layers}
    kinds |= {LAYER_PARTS[part] for _, part in circuit.weight_entries(parts.arch)}
    modules = {"attn": parts.attn_out, "mlp": parts.mlp_out}
    missing = sorted(k for k in kinds if any(m.bias is None for m in modules[k]))
    if not missing:
        return
    flags = [BIAS_FLAGS[k] for k in missing]
    family = type(model).__name__
    refusal = SafeSeekError(
        f"mean ablation folds each removed unit's mean into a bias; {family}'s "
        f"{' and '.join(missing)} output projections have none and its config cannot declare "
        f"one: export a circuit found with --ablation zero"
    )
    if not all(hasattr(model.config, f) for f in flags):
        raise refusal
    for flag in flags:
        setattr(model.config, flag, True)
    with torch.device("meta"):
        skeleton = AutoModelForCausalLM.from_config(model.config)
    ours = dict(model.named_modules())
    for name, module in skeleton.named_modules():
        if getattr(module, "bias", None) is not None and ours[name].bias is None:
            weight = ours[name].weight
            ours[name].bias = nn.Parameter(
                torch.zeros(module.bias.shape, dtype=weight.dtype, device=weight.device)
            )
    if any(m.bias is None for k in missing for m in modules[k]):
        raise refusal  # the flag declares other biases than the ones the means need


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


def export_saved(
    model: nn.Module, tokenizer: Any, circuit: Circuit, out: str | Path, masks_path: str | Path
) -> Path:
    """Export a circuit that discovery saved, removed the way it was found: with mean ablation,
    the means come from the run's masks.safetensors (`masks_path`)."""
    mm = MaskedModel.for_circuit(model, circuit, masks_path)
    return export(model, tokenizer, circuit, out, mm.means if mm.ablation == "mean" else None)
