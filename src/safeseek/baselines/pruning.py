"""Pruning-importance baselines with set difference (Wei et al., ICML 2024, "Assessing the
Brittleness of Safety Alignment via Pruning and Low-Rank Modifications"), at unit level.

A unit's importance is the sum over its weights in the projection it feeds (its input columns
of the attention output or MLP down projection) of
- SNIP: |W_ij * dL/dW_ij| (L: cross-entropy of the examples);
- Wanda: |W_ij| * ||X_j||_2 (X_j: channel j's input over the examples' tokens).
Each is computed on the behaviour examples and on the utility examples; `select` then takes the
units most important to the behaviour that are not among the most important to utility.
"""

from __future__ import annotations

import torch

from safeseek.baselines.common import (
    Examples,
    batches,
    per_input_channel,
    summed_loss,
)
from safeseek.data.encode import Encoded
from safeseek.models.adapters import locate
from safeseek.models.geometry import pool, readouts


def snip(model: torch.nn.Module, rows: list[Encoded], pad_id: int, granularities) -> dict:
    parts = locate(model)
    device = next(model.parameters()).device
    weights = {g: [m.weight for m in readouts(parts, g)] for g in granularities}
    wanted = {id(w) for ws in weights.values() for w in ws}
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:  # weight gradients only where they are read
        p.requires_grad_(id(p) in wanted)
        p.grad = None
    total = sum(e.scored for e in rows)
    try:
        for batch in batches(rows, pad_id, device):
            (summed_loss(model, parts, batch) / total).backward()
        out = {}
        for g, ws in weights.items():
            pairs = zip(readouts(parts, g), ws, strict=True)
            channels = torch.stack([per_input_channel(m, w.detach() * w.grad) for m, w in pairs])
            out[g] = pool(parts.arch, g, channels).cpu()
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)
            p.grad = None
    return out


@torch.no_grad()
def wanda(model: torch.nn.Module, rows: list[Encoded], pad_id: int, granularities) -> dict:
    parts = locate(model)
    device = next(model.parameters()).device
    sums: dict[tuple[str, int], torch.Tensor] = {}
    current: dict[str, torch.Tensor] = {}

    def accumulate(key: tuple[str, int]):
        def hook(module, args):
            x = args[0][current["mask"]].float()
            sums[key] = sums.get(key, 0) + (x * x).sum(0)

        return hook

    handles = [
        m.register_forward_pre_hook(accumulate((g, i)))
        for g in granularities
        for i, m in enumerate(readouts(parts, g))
    ]
    try:
        for batch in batches(rows, pad_id, device):
            current["mask"] = batch["attention_mask"].bool()
            inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
            parts.backbone(**inputs, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    out = {}
    for g in granularities:
        modules = readouts(parts, g)
        channels = torch.stack(
            [sums[(g, i)].sqrt() * per_input_channel(m, m.weight) for i, m in enumerate(modules)]
        )
        out[g] = pool(parts.arch, g, channels).cpu()
    return out


def snip_set_difference(model, pad_id: int, ex: Examples, granularities) -> tuple[dict, dict]:
    return snip(model, ex.behaviour, pad_id, granularities), snip(
        model, ex.utility, pad_id, granularities
    )


def wanda_set_difference(model, pad_id: int, ex: Examples, granularities) -> tuple[dict, dict]:
    return wanda(model, ex.behaviour, pad_id, granularities), wanda(
        model, ex.utility, pad_id, granularities
    )
