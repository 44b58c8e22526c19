"""Pruning-importance baselines with set difference (Wei et al., ICML 2024, "Assessing the
Brittleness of Safety Alignment via Pruning and Low-Rank Modifications"), at unit and at weight
level.

A weight W_ij of an output projection (attention output or MLP down) has the importance
- SNIP: |W_ij * dL/dW_ij| (L: cross-entropy of the examples);
- Wanda: |W_ij| * ||X_j||_2 (X_j: channel j's input over the examples' tokens).
A weight unit's score is its own entry's (Wei et al.'s granularity); a head's or neuron's is the
sum over its input columns of the projection it feeds. Each is computed on the behaviour
examples and on the utility examples; `select` then takes the units most important to the
behaviour that are not among the most important to utility.
"""

from __future__ import annotations

import torch
from torch import nn

from safeseek.baselines.common import (
    Examples,
    batches,
    per_input_channel,
    summed_loss,
)
from safeseek.data.encode import Encoded
from safeseek.models.adapters import locate
from safeseek.models.geometry import ModelParts, out_in, pool, site_modules


def _scores(parts: ModelParts, granularities, importance) -> dict[str, torch.Tensor]:
    """`[layers, units]` scores from `importance(module)`, each weight's importance shaped like
    `module.weight`: summed over a unit's input columns, or per entry for weight units (in
    `models/geometry.py`'s order)."""
    out = {}
    for g in granularities:
        layers = [site_modules(parts, g, i) for i in range(parts.arch.n_layers)]
        if g == "weight":
            rows = [
                torch.cat([out_in(m, importance(m).abs().float()).flatten() for m in modules])
                for modules in layers
            ]
            out[g] = torch.stack(rows).cpu()
        else:
            channels = torch.stack([per_input_channel(m, importance(m)) for (m,) in layers])
            out[g] = pool(parts.arch, g, channels).cpu()
    return out


def _projections(parts: ModelParts, granularities) -> list[nn.Module]:
    """Every projection whose weights some granularity's scores read, once."""
    found = {}
    for g in granularities:
        for i in range(parts.arch.n_layers):
            found.update({id(m): m for m in site_modules(parts, g, i)})
    return list(found.values())


def snip(model: torch.nn.Module, rows: list[Encoded], pad_id: int, granularities) -> dict:
    parts = locate(model)
    device = next(model.parameters()).device
    wanted = {id(m.weight) for m in _projections(parts, granularities)}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:  # weight gradients only where they are read
        p.requires_grad_(id(p) in wanted)
        p.grad = None
    total = sum(e.scored for e in rows)
    try:
        for batch in batches(rows, pad_id, device):
            (summed_loss(model, parts, batch) / total).backward()
        return _scores(parts, granularities, lambda m: m.weight.detach() * m.weight.grad)
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None


@torch.no_grad()
def wanda(model: torch.nn.Module, rows: list[Encoded], pad_id: int, granularities) -> dict:
    parts = locate(model)
    device = next(model.parameters()).device
    sums: dict[int, torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def accumulate(key: int):
        def hook(module, args):
            x = args[0][current["mask"]].float()
            sums[key] = sums.get(key, 0) + (x * x).sum(0)

        return hook

    modules = _projections(parts, granularities)
    handles = [m.register_forward_pre_hook(accumulate(id(m))) for m in modules]
    try:
        for batch in batches(rows, pad_id, device):
            current["mask"] = batch["attention_mask"].bool()
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            parts.backbone(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()

    def importance(m: nn.Module) -> torch.Tensor:  # |W_ij| * ||X_j||, shaped like m.weight
        norms = sums[id(m)].sqrt().to(m.weight.device)
        return out_in(m, out_in(m, m.weight.abs().float()) * norms[None, :])

    return _scores(parts, granularities, importance)


def snip_set_difference(model, pad_id: int, ex: Examples, granularities) -> tuple[dict, dict]:
    return snip(model, ex.behaviour, pad_id, granularities), snip(
        model, ex.utility, pad_id, granularities
    )


def wanda_set_difference(model, pad_id: int, ex: Examples, granularities) -> tuple[dict, dict]:
    return wanda(model, ex.behaviour, pad_id, granularities), wanda(
        model, ex.utility, pad_id, granularities
    )
