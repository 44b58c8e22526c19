"""Circuit: a set of units (heads, neurons, whole blocks) with the metadata that produced it.

Units are sorted, de-duplicated lists of `(layer, index)` pairs (`(layer, "attn" | "mlp")` for
layers). A circuit saved to JSON carries the architecture it was found on; loading it against a
model with other shapes is refused with a message that names the difference.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from safeseek.errors import SafeSeekError
from safeseek.fileio import write_json
from safeseek.models.adapters import architecture
from safeseek.models.geometry import GRANULARITIES, LAYER_PARTS, Architecture

FORMAT = "safeseek-circuit"
VERSION = 1
_FIELDS = {"head": "heads", "neuron": "neurons", "layer": "layers"}


def as_architecture(obj: Architecture | nn.Module | Any) -> Architecture:
    """Accept an Architecture, a model, or anything with an `.arch` (a MaskedModel)."""
    if isinstance(obj, Architecture):
        return obj
    if isinstance(getattr(obj, "arch", None), Architecture):
        return obj.arch
    return architecture(obj)


class Circuit:
    """A set of units, with set operations, sparsity, and JSON save/load."""

    def __init__(
        self,
        heads: Iterable[tuple[int, int]] = (),
        neurons: Iterable[tuple[int, int]] = (),
        layers: Iterable[tuple[int, str]] = (),
        metadata: dict[str, Any] | None = None,
    ) -> None:
        self.heads: list[tuple[int, int]] = sorted({(int(a), int(b)) for a, b in heads})
        self.neurons: list[tuple[int, int]] = sorted({(int(a), int(b)) for a, b in neurons})
        self.layers: list[tuple[int, str]] = sorted({(int(a), str(b)) for a, b in layers})
        bad = [part for _, part in self.layers if part not in LAYER_PARTS]
        if bad:
            raise SafeSeekError(f"layer units are 'attn' or 'mlp', got {bad[0]!r}")
        self.metadata: dict[str, Any] = dict(metadata or {})

    # -- units ---------------------------------------------------------------------------
    def units(self, granularity: str) -> list[tuple[int, Any]]:
        if granularity not in _FIELDS:
            raise SafeSeekError(f"unknown granularity {granularity!r}; use {', '.join(_FIELDS)}")
        return getattr(self, _FIELDS[granularity])

    def counts(self) -> dict[str, int]:
        return {g: len(self.units(g)) for g in GRANULARITIES}

    def __len__(self) -> int:
        return sum(self.counts().values())

    def is_empty(self) -> bool:
        return len(self) == 0

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Circuit):
            return NotImplemented
        return all(self.units(g) == other.units(g) for g in GRANULARITIES)

    def __hash__(self) -> int:
        return hash(tuple(tuple(self.units(g)) for g in GRANULARITIES))

    def __repr__(self) -> str:
        counts = ", ".join(f"{n} {g}s" for g, n in self.counts().items() if n)
        return f"Circuit({counts or 'empty'})"

    # -- set operations ------------------------------------------------------------------
    def _combine(self, other: Circuit, op: str) -> Circuit:
        parts = {}
        for g in GRANULARITIES:
            mine, theirs = set(self.units(g)), set(other.units(g))
            parts[_FIELDS[g]] = {"|": mine | theirs, "&": mine & theirs, "-": mine - theirs}[op]
        return Circuit(**parts, metadata={"derived_from": op})

    def union(self, other: Circuit) -> Circuit:
        return self._combine(other, "|")

    def intersection(self, other: Circuit) -> Circuit:
        return self._combine(other, "&")

    def jaccard(self, other: Circuit) -> float:
        """Overlap of the two unit sets, |A & B| / |A | B| (1.0 for two empty circuits)."""
        union = len(self.union(other))
        return len(self.intersection(other)) / union if union else 1.0

    def difference(self, other: Circuit) -> Circuit:
        return self._combine(other, "-")

    __or__ = union
    __and__ = intersection
    __sub__ = difference

    # -- against a model -----------------------------------------------------------------
    def sparsity(
        self, model: Architecture | nn.Module | Any, granularities: Iterable[str] | None = None
    ) -> dict[str, float]:
        """|C| / |units| per granularity, and `overall` over `granularities`.

        `granularities` defaults to those recorded in the metadata, else head and neuron.
        """
        arch = as_architecture(model)
        grans = tuple(granularities or self.metadata.get("granularities") or ("head", "neuron"))
        total = arch.num_units
        out = {g: len(self.units(g)) / total[g] for g in GRANULARITIES}
        out["overall"] = sum(len(self.units(g)) for g in grans) / sum(total[g] for g in grans)
        return out

    def check(self, model: Architecture | nn.Module | Any) -> None:
        """Raise a SafeSeekError naming what differs if this circuit does not fit `model`."""
        arch = as_architecture(model)
        recorded = self.metadata.get("model", {}).get("architecture")
        if recorded:
            diffs = arch.differences(recorded)
            if diffs:
                raise SafeSeekError(
                    "circuit does not match the model (circuit vs model): " + "; ".join(diffs)
                )
        for g in ("head", "neuron"):
            width = arch.units_per_layer(g)
            for layer, index in self.units(g):
                if not (0 <= layer < arch.n_layers and 0 <= index < width):
                    raise SafeSeekError(
                        f"circuit {g} ({layer}, {index}) is outside the model's "
                        f"{arch.n_layers} layers x {width} {g}s"
                    )
        for layer, _ in self.layers:
            if not 0 <= layer < arch.n_layers:
                raise SafeSeekError(
                    f"circuit layer {layer} is outside the model's {arch.n_layers} layers"
                )

    def membership(self, model: Architecture | nn.Module | Any, granularity: str) -> torch.Tensor:
        """A `[n_layers, units_per_layer]` bool tensor, True for units in the circuit."""
        arch = as_architecture(model)
        self.check(arch)
        mask = torch.zeros(arch.n_layers, arch.units_per_layer(granularity), dtype=torch.bool)
        for layer, index in self.units(granularity):
            col = LAYER_PARTS.index(index) if granularity == "layer" else index
            mask[layer, col] = True
        return mask

    @classmethod
    def from_membership(
        cls, masks: dict[str, torch.Tensor], metadata: dict[str, Any] | None = None
    ) -> Circuit:
        """Inverse of `membership`: units whose entry is True (or > 0.5)."""
        parts: dict[str, list[tuple[int, Any]]] = {}
        for g, mask in masks.items():
            idx = (mask > 0.5).nonzero().tolist()
            if g == "layer":
                parts[_FIELDS[g]] = [(layer, LAYER_PARTS[col]) for layer, col in idx]
            else:
                parts[_FIELDS[g]] = [(layer, col) for layer, col in idx]
        return cls(**parts, metadata=metadata)

    @classmethod
    def random(
        cls, model: Architecture | nn.Module | Any, counts: dict[str, int], seed: int = 0
    ) -> Circuit:
        """Uniformly random units, `counts[g]` of each granularity g (a control circuit)."""
        arch = as_architecture(model)
        g = torch.Generator().manual_seed(seed)
        masks = {}
        for gran, n in counts.items():
            total = arch.num_units[gran]
            if not 0 <= n <= total:
                raise SafeSeekError(f"cannot draw {n} of the model's {total} {gran} units")
            flat = torch.zeros(total, dtype=torch.bool)
            flat[torch.randperm(total, generator=g)[:n]] = True
            masks[gran] = flat.view(arch.n_layers, -1)
        return cls.from_membership(masks, metadata={"random_seed": seed})

    # -- files ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": FORMAT,
            "version": VERSION,
            "counts": self.counts(),
            "heads": [list(u) for u in self.heads],
            "neurons": [list(u) for u in self.neurons],
            "layers": [list(u) for u in self.layers],
            "metadata": self.metadata,
        }

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON atomically."""
        write_json(path, self.to_dict())

    @classmethod
    def load(
        cls, path: str | os.PathLike[str], model: Architecture | nn.Module | Any = None
    ) -> Circuit:
        """Read a circuit; with `model`, refuse it unless it fits that model."""
        try:
            with open(path) as fh:
                data = json.load(fh)
        except FileNotFoundError:
            raise SafeSeekError(f"{path}: no such circuit file") from None
        except json.JSONDecodeError as exc:
            raise SafeSeekError(f"{path}:{exc.lineno}: not valid JSON ({exc.msg})") from None
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise SafeSeekError(f"{path}: not a SafeSeek circuit file (no format '{FORMAT}')")
        if data.get("version") != VERSION:
            raise SafeSeekError(f"{path}: circuit format version {data.get('version')} unknown")
        try:
            circuit = cls(
                heads=data.get("heads", []),
                neurons=data.get("neurons", []),
                layers=data.get("layers", []),
                metadata=data.get("metadata", {}),
            )
        except (TypeError, ValueError) as exc:
            raise SafeSeekError(f"{path}: malformed unit list ({exc})") from None
        if model is not None:
            try:
                circuit.check(model)
            except SafeSeekError as exc:
                raise SafeSeekError(f"{path}: {exc}") from None
        return circuit
