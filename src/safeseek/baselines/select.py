"""From unit scores to a circuit of a requested size (one top-k shared by every method)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from safeseek.circuit import Circuit
from safeseek.errors import SafeSeekError
from safeseek.models.geometry import Architecture


@dataclass
class UnitScores:
    """Per granularity, a `[layers, units]` score: higher = the unit carries more of the
    behaviour. Set-difference methods also hold each unit's importance to utility."""

    method: str
    behaviour: dict[str, torch.Tensor]
    utility: dict[str, torch.Tensor] | None = None
    seconds: float = 0.0
    settings: dict[str, Any] = field(default_factory=dict)


def circuit_of_size(scores: UnitScores, arch: Architecture, fraction: float) -> Circuit:
    """The top `fraction` of all units by behaviour score, ranked jointly over granularities.

    Set difference (Wei et al.): a unit among the top `fraction` by utility importance is
    never taken (the top-q behaviour units minus the top-p utility units, p = q), and the
    circuit is filled from the next behaviour ranks.
    """
    grans = list(scores.behaviour)
    total = sum(arch.num_units[g] for g in grans)
    check_size(fraction)
    k = max(1, round(fraction * total))
    flat = torch.cat([scores.behaviour[g].flatten().float() for g in grans])
    if scores.utility is not None:
        utility = torch.cat([scores.utility[g].flatten().float() for g in grans])
        flat = flat.masked_fill(_top(utility, k), float("-inf"))
    chosen = _top(flat, k)
    masks, start = {}, 0
    for g in grans:
        n = arch.num_units[g]
        masks[g] = chosen[start : start + n].view(arch.n_layers, -1)
        start += n
    meta = {"method": scores.method, "size_fraction": fraction, **scores.settings}
    return Circuit.from_membership(masks, metadata=meta)


def check_size(fraction: float) -> None:
    """Refuse a circuit size a baseline cannot cut (before the scoring, which is the slow part)."""
    if not 0 < fraction <= 0.5:
        raise SafeSeekError(f"circuit size must be in (0, 0.5] of the units, got {fraction}")


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(values.numel(), dtype=torch.bool)
    out[torch.topk(values, k).indices] = True
    return out
