"""Baseline circuit finders, to compare with mask optimisation on the same data.

Every method scores each unit (higher = the unit carries more of the behaviour; see each
module for what the number is) and `circuit_of_size` turns scores into a circuit of a
requested fraction of units (`circuit_of_counts`: a number of units per granularity):

- `activation-patching`: exact single-unit ablation, rise in the behaviour's loss;
- `attribution-patching`: its first-order estimate for every unit at once (gradient x
  activation difference to the clean mean);
- `integrated-gradients`: EAP-IG at node level, the same difference times the gradient
  averaged along the path from the clean mean (one layer at a time, 5 points);
- `snip-set-difference`, `wanda-set-difference`: pruning importance on behaviour data minus
  the units most important on utility data (Wei et al., ICML 2024);
- `random`: uniform random scores (a control; one circuit per seed).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from rich.progress import Progress

from safeseek.baselines.common import examples
from safeseek.baselines.patching import (
    activation_patching,
    attribution_patching,
    integrated_gradients,
)
from safeseek.baselines.pruning import snip_set_difference, wanda_set_difference
from safeseek.baselines.select import UnitScores, circuit_of_counts, circuit_of_size
from safeseek.data.encode import pad_token_id
from safeseek.errors import SafeSeekError
from safeseek.models.adapters import architecture

Scores = dict[str, torch.Tensor]  # granularity -> [layers, units]


def _random(model, pad_id, ex, granularities, seed, progress) -> tuple[Scores, None]:
    arch = architecture(model)
    g = torch.Generator().manual_seed(seed)
    return {
        gran: torch.rand(arch.n_layers, arch.units_per_layer(gran), generator=g)
        for gran in granularities
    }, None


# name -> (model, pad_id, examples, granularities, seed, progress) -> (behaviour scores,
# utility scores or None); a new method is one entry here.
METHODS: dict[str, Callable[..., tuple[Scores, Scores | None]]] = {
    "activation-patching": lambda model, pad_id, ex, grans, seed, progress: (
        activation_patching(model, pad_id, ex, grans, progress=progress),
        None,
    ),
    "attribution-patching": lambda model, pad_id, ex, grans, seed, progress: (
        attribution_patching(model, pad_id, ex, grans),
        None,
    ),
    "integrated-gradients": lambda model, pad_id, ex, grans, seed, progress: (
        integrated_gradients(model, pad_id, ex, grans, progress=progress),
        None,
    ),
    "snip-set-difference": lambda model, pad_id, ex, grans, seed, progress: snip_set_difference(
        model, pad_id, ex, grans
    ),
    "wanda-set-difference": lambda model, pad_id, ex, grans, seed, progress: wanda_set_difference(
        model, pad_id, ex, grans
    ),
    "random": _random,
}
# Methods that score single weights (patching scores a unit by ablating it: one forward per
# unit, which millions of weights rule out).
WEIGHT_METHODS = ("snip-set-difference", "wanda-set-difference", "random")


def score_units(
    method: str,
    model: torch.nn.Module,
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    scenario: str,
    granularities: tuple[str, ...] = ("head", "neuron"),
    seed: int = 0,
    limit: int | None = 64,
    max_response_tokens: int | None = 32,
    progress: Progress | None = None,
) -> UnitScores:
    """Score every unit of `model` for `scenario`'s behaviour on (the first `limit` examples
    of) `records` with `method`."""
    if method not in METHODS:
        raise SafeSeekError(f"unknown method {method!r}; available: mask, {', '.join(METHODS)}")
    unknown = [g for g in granularities if g not in ("head", "neuron", "weight")]
    if unknown:
        raise SafeSeekError(f"baselines score heads, neurons and weights, not {unknown[0]}")
    if "weight" in granularities and method not in WEIGHT_METHODS:
        raise SafeSeekError(
            f"{method} scores heads and neurons; weight units: {', '.join(WEIGHT_METHODS)}"
        )
    start = time.perf_counter()
    pad_id = pad_token_id(tokenizer)
    ex = examples(tokenizer, records, scenario, limit, max_response_tokens=max_response_tokens)
    behaviour, utility = METHODS[method](model, pad_id, ex, granularities, seed, progress)
    settings = {"seed": seed, "examples": len(ex.behaviour), "scenario": scenario}
    return UnitScores(method, behaviour, utility, time.perf_counter() - start, settings)


__all__ = [
    "METHODS",
    "WEIGHT_METHODS",
    "UnitScores",
    "circuit_of_counts",
    "circuit_of_size",
    "score_units",
]
