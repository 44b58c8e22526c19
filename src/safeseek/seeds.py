"""Several discovery seeds on the same data: how far their circuits agree.

A learned circuit is one draw from a distribution (README, "Robustness"); `safeseek discover
--seeds 0,1,2` runs one discovery per seed and writes this summary to OUT/seeds.json: the
pairwise Jaccard overlap of the unit sets, the units every seed found, and each measured
quantity of the circuits' own checks as mean and range.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from functools import reduce
from typing import Any

from safeseek.circuit import Circuit
from safeseek.errors import SafeSeekError


def parse_seeds(text: str) -> list[int]:
    """ "0,1,2" -> [0, 1, 2]; at least two distinct seeds."""
    try:
        seeds = [int(s) for s in text.split(",") if s.strip()]
    except ValueError:
        raise SafeSeekError(f"--seeds takes comma-separated integers, got {text!r}") from None
    if len(set(seeds)) != len(seeds) or len(seeds) < 2:
        raise SafeSeekError(f"--seeds takes at least two distinct seeds, got {text!r}")
    return seeds


def spread(values: Sequence[float | None]) -> dict[str, float] | None:
    """Mean and range of the values given (None entries skipped; None when there are none)."""
    kept = [float(v) for v in values if v is not None]
    if not kept:
        return None
    return {
        "mean": round(statistics.fmean(kept), 4),
        "min": round(min(kept), 4),
        "max": round(max(kept), 4),
        "n": len(kept),
    }


def span(values: Sequence[float], fmt: str = "{:.1%}") -> str:
    """Mean and range as text, "93.2% (87.0%-96.4%)"; one value alone as itself."""
    if not values:
        return "-"
    if len(values) == 1:
        return fmt.format(values[0])
    mean, low, high = statistics.fmean(values), min(values), max(values)
    return f"{fmt.format(mean)} ({fmt.format(low)}-{fmt.format(high)})"


def compare(circuits: Mapping[int, Circuit], fractions: Mapping[int, float]) -> dict[str, Any]:
    """The seeds' circuits side by side (see the module docstring). `fractions`: each
    circuit's share of the model's units; each circuit's check is read from its metadata."""
    seeds = sorted(circuits)
    checks = {s: circuits[s].metadata.get("check") or {} for s in seeds}
    common = reduce(Circuit.intersection, (circuits[s] for s in seeds))
    pairs = [circuits[a].jaccard(circuits[b]) for i, a in enumerate(seeds) for b in seeds[i + 1 :]]
    return {
        "seeds": seeds,
        "jaccard": [[round(circuits[a].jaccard(circuits[b]), 4) for b in seeds] for a in seeds],
        "jaccard_pairs": spread(pairs),
        "in_every_seed": {k: v for k, v in common.to_dict().items() if k in _UNIT_FIELDS},
        "units": spread([len(circuits[s]) for s in seeds]),
        "fraction": spread([fractions[s] for s in seeds]),
        "removed": spread([checks[s].get("removed") for s in seeds]),
        "utility_kept": spread([checks[s].get("utility_kept") for s in seeds]),
        "passed": sum(bool(checks[s].get("passed")) for s in seeds),
        "per_seed": {
            str(s): {
                **circuits[s].counts(),
                "fraction": round(fractions[s], 6),
                "removed": checks[s].get("removed"),
                "utility_kept": checks[s].get("utility_kept"),
                "passed": checks[s].get("passed"),
            }
            for s in seeds
        },
    }


_UNIT_FIELDS = ("heads", "neurons", "layers")


def describe(summary: dict[str, Any]) -> str:
    """One line for the terminal."""
    n = len(summary["seeds"])
    units, pairs = summary["units"], summary["jaccard_pairs"]
    common = sum(len(v) for v in summary["in_every_seed"].values())
    line = (
        f"{n} seeds: circuit size {units['mean']:.1f} units ({units['min']:.0f}-"
        f"{units['max']:.0f}); Jaccard between seeds {pairs['mean']:.2f} "
        f"({pairs['min']:.2f}-{pairs['max']:.2f}); {common} units in every seed"
    )
    removed, kept = summary["removed"], summary["utility_kept"]
    if removed is not None:
        line += f"; removed {removed['mean']:.0%} ({removed['min']:.0%}-{removed['max']:.0%})"
    if kept is not None:
        line += f", utility kept {kept['mean']:.0%} ({kept['min']:.0%}-{kept['max']:.0%})"
    return line + f"; {summary['passed']}/{n} passed their check"
