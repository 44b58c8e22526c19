"""From unit scores to a circuit of a requested size: one top-k shared by every method, over
all granularities jointly or with a quota per granularity."""

from __future__ import annotations

from collections.abc import Mapping
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
    behaviour = torch.cat([scores.behaviour[g].flatten().float() for g in grans])
    utility = None
    if scores.utility is not None:
        utility = torch.cat([scores.utility[g].flatten().float() for g in grans])
    chosen = _chosen(behaviour, utility, k)
    masks, start = {}, 0
    for g in grans:
        n = arch.num_units[g]
        masks[g] = chosen[start : start + n].view(arch.n_layers, -1)
        start += n
    meta = {"method": scores.method, "size_fraction": fraction, **scores.settings}
    return Circuit.from_membership(masks, metadata=meta)


def circuit_of_counts(scores: UnitScores, arch: Architecture, counts: Mapping[str, int]) -> Circuit:
    """The top `counts[g]` units of each granularity g by behaviour score, ranked within g: a
    quota per granularity, e.g. another circuit's head / neuron split, so that methods are
    compared like for like (a joint top-k of summed weight scores takes mostly heads). Set
    difference works within each granularity too."""
    grans = list(scores.behaviour)
    unknown = [g for g in counts if g not in grans]
    if unknown:
        raise SafeSeekError(
            f"no {unknown[0]} scores to fill its quota (scored: {', '.join(grans)})"
        )
    for g, k in counts.items():
        if not 0 <= k <= arch.num_units[g]:
            raise SafeSeekError(f"{g} quota must be in [0, {arch.num_units[g]}], got {k}")
    if sum(counts.values()) < 1:
        raise SafeSeekError("a circuit needs at least one unit; every quota is 0")
    masks = {}
    for g in grans:
        utility = scores.utility[g].flatten().float() if scores.utility is not None else None
        chosen = _chosen(scores.behaviour[g].flatten().float(), utility, counts.get(g, 0))
        masks[g] = chosen.view(arch.n_layers, -1)
    meta = {"method": scores.method, "counts": dict(counts), **scores.settings}
    return Circuit.from_membership(masks, metadata=meta)


def check_size(fraction: float) -> None:
    """Refuse a circuit size a baseline cannot cut (before the scoring, which is the slow part)."""
    if not 0 < fraction <= 0.5:
        raise SafeSeekError(f"circuit size must be in (0, 0.5] of the units, got {fraction}")


def _chosen(behaviour: torch.Tensor, utility: torch.Tensor | None, k: int) -> torch.Tensor:
    """The k units of highest behaviour score; with utility scores, the set difference: the k
    most useful units are never taken and the next behaviour ranks fill their places."""
    if utility is not None and k:
        behaviour = behaviour.masked_fill(_top(utility, k), float("-inf"))
    return _top(behaviour, k)


def _top(values: torch.Tensor, k: int) -> torch.Tensor:
    out = torch.zeros(values.numel(), dtype=torch.bool)
    out[torch.topk(values, k).indices] = True
    return out
