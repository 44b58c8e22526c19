"""Circuit: a set of units (heads, neurons, whole blocks, weight entries) with the metadata that
produced it.

Units are sorted, de-duplicated lists of `(layer, index)` pairs (`(layer, "attn" | "mlp")` for
layers; weight indices as in `models/geometry.py`). A circuit saved to JSON carries the
architecture it was found on; loading it against a model with other shapes is refused with a
message that names the difference. Weight units can number millions, so they are not written
into the JSON: `save` puts them beside it (`<name>.weights.safetensors`, one int64 index list
per layer and matrix, entries row-major in the matrix seen `[out, in]`) and the JSON names that
file, its count and its SHA-256.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from safeseek.errors import SafeSeekError
from safeseek.fileio import atomic_path, write_json
from safeseek.models.adapters import architecture
from safeseek.models.geometry import (
    GRANULARITIES,
    LAYER_PARTS,
    WEIGHT_MATRICES,
    Architecture,
    weight_blocks,
)

FORMAT = "safeseek-circuit"
VERSION = 1
WEIGHTS_FORMAT = "safeseek-circuit-weights"
_FIELDS = {"head": "heads", "neuron": "neurons", "layer": "layers", "weight": "weights"}


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
        weights: Iterable[tuple[int, int]] = (),
    ) -> None:
        self.heads: list[tuple[int, int]] = sorted({(int(a), int(b)) for a, b in heads})
        self.neurons: list[tuple[int, int]] = sorted({(int(a), int(b)) for a, b in neurons})
        self.layers: list[tuple[int, str]] = sorted({(int(a), str(b)) for a, b in layers})
        self.weights: list[tuple[int, int]] = sorted({(int(a), int(b)) for a, b in weights})
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
        for g in ("head", "neuron", "weight"):
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

    def weight_entries(
        self, model: Architecture | nn.Module | Any
    ) -> dict[tuple[int, int], torch.Tensor]:
        """`{(layer, part): flat int64 indices into that projection seen [out, in]}` of the
        weight units, `part` indexing `WEIGHT_MATRICES` (attention output, MLP down)."""
        blocks = weight_blocks(as_architecture(model))
        by_layer: dict[int, list[int]] = {}
        for layer, index in self.weights:
            by_layer.setdefault(layer, []).append(index)
        out = {}
        for layer, indices in by_layer.items():
            index = torch.tensor(indices, dtype=torch.int64)
            for part, (_, first, n_out, n_in) in enumerate(blocks):
                inside = (index >= first) & (index < first + n_out * n_in)
                if inside.any():
                    out[layer, part] = index[inside] - first
        return out

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

    def random_like(self, model: Architecture | nn.Module | Any, seed: int = 0) -> Circuit:
        """A control circuit with as many units of each granularity in each layer as this one,
        drawn uniformly within the layer (head, neuron and layer units)."""
        if self.weights:
            raise SafeSeekError("random_like draws head, neuron and layer units, not weights")
        arch = as_architecture(model)
        g = torch.Generator().manual_seed(seed)
        masks = {}
        for gran in ("head", "neuron", "layer"):
            have = self.membership(arch, gran)
            drawn = torch.zeros_like(have)
            for layer, n in enumerate(have.sum(1).tolist()):
                drawn[layer, torch.randperm(have.shape[1], generator=g)[:n]] = True
            masks[gran] = drawn
        return Circuit.from_membership(masks, metadata={"random_seed": seed, "like": self.counts()})

    # -- files ---------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """The JSON form; weight units are only counted here (`save` writes them beside it)."""
        out = {
            "format": FORMAT,
            "version": VERSION,
            "counts": self.counts(),
            "heads": [list(u) for u in self.heads],
            "neurons": [list(u) for u in self.neurons],
            "layers": [list(u) for u in self.layers],
            "metadata": self.metadata,
        }
        if self.weights:
            out["weights"] = {"count": len(self.weights)}
        return out

    def save(self, path: str | os.PathLike[str]) -> None:
        """Write JSON atomically (and the weight units beside it, see the module docstring)."""
        data = self.to_dict()
        if self.weights:
            side = _weights_path(path)
            _save_weights(self, side)
            data["weights"].update(file=side.name, sha256=_sha256(side))
        write_json(path, data)

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
                weights=_load_weights(path, data) if data.get("weights") else (),
            )
        except (TypeError, ValueError, KeyError) as exc:
            raise SafeSeekError(f"{path}: malformed unit list ({exc})") from None
        if model is not None:
            try:
                circuit.check(model)
            except SafeSeekError as exc:
                raise SafeSeekError(f"{path}: {exc}") from None
        return circuit


def _weights_path(path: str | os.PathLike[str]) -> Path:
    path = Path(path)
    return path.with_name(f"{path.stem}.weights.safetensors")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _save_weights(circuit: Circuit, path: Path) -> None:
    """Weight units as `{layer}.{projection}` int64 lists of entries in that matrix (row-major
    `[out, in]`); the circuit's architecture (metadata) says where each matrix starts."""
    arch = circuit.metadata.get("model", {}).get("architecture")
    if not arch:
        raise SafeSeekError("a circuit with weight units needs its model architecture to be saved")
    tensors = {
        f"{layer}.{WEIGHT_MATRICES[part][0]}": index.contiguous()
        for (layer, part), index in circuit.weight_entries(Architecture(**arch)).items()
    }
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata={"format": WEIGHTS_FORMAT})


def _load_weights(path: str | os.PathLike[str], data: dict[str, Any]) -> list[tuple[int, int]]:
    """The weight units of circuit file `path` (its JSON `data`), from the file beside it."""
    entry = data["weights"]
    side = Path(path).with_name(entry["file"])
    if not side.is_file():
        raise SafeSeekError(f"{path}: its weight units file {side} is missing")
    if _sha256(side) != entry.get("sha256"):
        raise SafeSeekError(f"{side}: does not match {path} (SHA-256 differs)")
    try:
        arch = data["metadata"]["model"]["architecture"]
        firsts = {name: first for name, first, _, _ in weight_blocks(Architecture(**arch))}
        tensors = load_file(str(side))
    except Exception as exc:  # safetensors raises its own error types
        raise SafeSeekError(f"{side}: not a circuit weights file ({exc})") from None
    units: list[tuple[int, int]] = []
    for key, index in tensors.items():
        layer, name = key.split(".", 1)
        units += [(int(layer), firsts[name] + i) for i in index.tolist()]
    if len(units) != entry["count"]:
        raise SafeSeekError(
            f"{side}: holds {len(units)} weight units, {path} says {entry['count']}"
        )
    return units
