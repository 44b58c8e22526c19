"""The names of the views a circuit is measured under, in EVAL.json, its generations, circuit
checks and the report: the full model, the model without the circuit, the circuit alone -- the
same names as `MaskedModel.without` / `.only` and the objectives' terms (`scenarios.VIEWS`)."""

from __future__ import annotations

from typing import Any

VIEWS = ("full", "without", "only")
# What files written before 2026-11-28 called the views.
_RENAMED = {"without_circuit": "without", "circuit_only": "only"}


def read_views(obj: Any) -> Any:
    """EVAL.json's content, generation rows or a check verdict with today's view names, whatever
    names the file was written with (`without_circuit`, `circuit_only` before 2026-11-28)."""
    if isinstance(obj, list):
        return [read_views(item) for item in obj]
    if not isinstance(obj, dict):
        return obj
    out = {_RENAMED.get(key, key): read_views(value) for key, value in obj.items()}
    if out.get("view") in _RENAMED:
        out["view"] = _RENAMED[out["view"]]
    return out
