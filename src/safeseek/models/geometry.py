"""Unit geometry: which units a model has, and which channels, rows and modules each one owns.

Every module that acts on units (masking, export, ownership for tuning, the baselines) reads
the geometry from here; docs/ARCHITECTURE.md shows where it is used.

Where a unit acts (`SITES`):
- head h of layer l: input channels `[h*head_dim, (h+1)*head_dim)` of the attention output
  projection, i.e. exactly head h's contribution (grouped-query attention needs no ungrouping
  there);
- neuron j of layer l: input channel j of the MLP down projection;
- layer (l, attn|mlp): the whole output of that projection, i.e. the block's contribution;
- weight (l, i): one entry of the attention or MLP output projection's weight, seen `[out, in]`
  (`WEIGHT_MATRICES`): index i runs row-major over the attention output projection's entries,
  then over the MLP down projection's. The finest granularity: an entry moves one input
  channel's contribution to one output channel.

Projections are `nn.Linear` (weight stored `[out, in]`), a PEFT-wrapped Linear, or GPT-2's
`Conv1D` (stored `[in, out]`); `out_in` hides the difference.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn
from transformers.pytorch_utils import Conv1D

from safeseek.errors import SafeSeekError

GRANULARITIES = ("head", "neuron", "layer", "weight")
# Granularities whose units are channels of an activation (masked by hooks on it; their means
# are measured); weight units are entries of the projections those channels feed.
ACTIVATION_GRANULARITIES = ("head", "neuron", "layer")
LAYER_PARTS = ("attn", "mlp")


@dataclass(frozen=True)
class Architecture:
    """The shapes that define which units a model has; a circuit is valid only on a match."""

    family: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    intermediate_size: int
    hidden_size: int

    @property
    def num_units(self) -> dict[str, int]:
        return {
            "head": self.n_layers * self.n_heads,
            "neuron": self.n_layers * self.intermediate_size,
            "layer": self.n_layers * len(LAYER_PARTS),
            "weight": self.n_layers * sum(o * i for _, _, o, i in weight_blocks(self)),
        }

    def units_per_layer(self, granularity: str) -> int:
        return self.num_units[granularity] // self.n_layers

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def fingerprint(self) -> str:
        """A short hash of the shapes, stored with circuits and masks."""
        blob = json.dumps(self.to_dict(), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:16]

    def differences(self, other: dict[str, Any]) -> list[str]:
        """Human-readable differences against another architecture's `to_dict()`."""
        mine = self.to_dict()
        return [
            f"{key} {other.get(key)!r} vs {mine[key]!r}"
            for key in mine
            if key in other and other[key] != mine[key]
        ]


@dataclass(frozen=True)
class ModelParts:
    """An architecture together with the live modules the masks hook into, one per layer."""

    arch: Architecture
    backbone: nn.Module
    layers: tuple[nn.Module, ...]
    attn_out: tuple[nn.Module, ...]
    mlp_out: tuple[nn.Module, ...]


@dataclass(frozen=True)
class Site:
    """Where a granularity's units act in each layer."""

    projections: tuple[str, ...]  # ModelParts fields; "layer" has one unit per entry
    side: str  # "input": a unit is a slice of input channels; "output": the whole output


SITES = {
    "head": Site(("attn_out",), "input"),
    "neuron": Site(("mlp_out",), "input"),
    "layer": Site(("attn_out", "mlp_out"), "output"),
    "weight": Site(("attn_out", "mlp_out"), "weight"),
}
# The projections whose entries are weight units, in index order, and the activation
# granularity whose channels are each one's input (its mean ablation reads their means).
WEIGHT_MATRICES = (("attn_out", "head"), ("mlp_out", "neuron"))


def weight_blocks(arch: Architecture) -> list[tuple[str, int, int, int]]:
    """Per layer, `(projection, first index, out, in)` of each matrix in `WEIGHT_MATRICES`:
    weight unit `first + r * in + c` is entry (r, c) of that projection seen `[out, in]`."""
    blocks, first = [], 0
    for name, granularity in WEIGHT_MATRICES:
        width = channel_width(arch, granularity)
        blocks.append((name, first, arch.hidden_size, width))
        first += arch.hidden_size * width
    return blocks


def site_modules(parts: ModelParts, granularity: str, layer: int) -> tuple[nn.Module, ...]:
    """The projections of `layer` where `granularity`'s units act (`SITES`)."""
    return tuple(getattr(parts, name)[layer] for name in SITES[granularity].projections)


def channel_width(arch: Architecture, granularity: str) -> int:
    """Width of the activation a granularity's units live in (per layer)."""
    return {
        "head": arch.n_heads * arch.head_dim,
        "neuron": arch.intermediate_size,
        "layer": arch.hidden_size,
    }[granularity]


def unit_channels(arch: Architecture, granularity: str, units: Sequence[int]) -> list[int]:
    """The input channels that the given units of one layer own."""
    if granularity == "head":
        return _blocks(units, arch.head_dim)
    if granularity == "neuron":
        return list(units)
    raise SafeSeekError(f"{granularity} units own a whole output, not input channels")


def expand(arch: Architecture, granularity: str, per_unit: torch.Tensor) -> torch.Tensor:
    """`[layers, units]` values (e.g. keep masks) repeated over the channels each unit owns;
    layer units stay `[layers, parts]` (each multiplies a whole output)."""
    if granularity == "head":
        return per_unit.repeat_interleave(arch.head_dim, dim=1)
    return per_unit


def pool(arch: Architecture, granularity: str, channels: torch.Tensor) -> torch.Tensor:
    """`[layers, channels]` scores summed into `[layers, units]`: the inverse of `expand`."""
    if granularity == "head":
        return channels.view(arch.n_layers, arch.n_heads, arch.head_dim).sum(-1)
    return channels


# How the output rows of a projection *into* the units are laid out (Family.head_in/neuron_in):
#   q                one block of head_dim rows per query head
#   kv               one block per key/value head, shared by n_heads / n_kv_heads query heads
#   qkv              fused [q | k | v] (Phi-3, GPT-2's c_attn)
#   qkv_interleaved  per head [q_h | k_h | v_h] (GPT-NeoX)
#   neuron           one row per neuron;  gate_up: fused [gate | up] (Phi-3)
def owned_rows(
    layout: str, arch: Architecture, heads: Sequence[int], neurons: Sequence[int]
) -> list[int]:
    """Output rows of a projection with `layout` that the given heads/neurons of one layer own;
    a key/value head is owned when any of its query heads is."""
    hd, nh, nkv = arch.head_dim, arch.n_heads, arch.n_kv_heads
    kv_heads = sorted({h // (nh // nkv) for h in heads})
    if layout == "q":
        return _blocks(heads, hd)
    if layout == "kv":
        return _blocks(kv_heads, hd)
    if layout == "qkv":
        k0, v0 = nh * hd, (nh + nkv) * hd
        kv = _blocks(kv_heads, hd)
        return _blocks(heads, hd) + [k0 + r for r in kv] + [v0 + r for r in kv]
    if layout == "qkv_interleaved":
        return _blocks(heads, 3 * hd)
    if layout == "neuron":
        return list(neurons)
    if layout == "gate_up":
        return list(neurons) + [arch.intermediate_size + j for j in neurons]
    raise SafeSeekError(f"unknown row layout {layout!r}")


def _blocks(index: Sequence[int], width: int) -> list[int]:
    return [i * width + d for i in index for d in range(width)]


# -- projections: nn.Linear, PEFT-wrapped Linear, GPT-2's Conv1D ------------------------------
def is_projection(module: nn.Module) -> bool:
    return isinstance(module, nn.Linear | Conv1D)


def _stores_in_out(module: nn.Module) -> bool:
    return isinstance(getattr(module, "base_layer", module), Conv1D)


def out_in(module: nn.Module, tensor: torch.Tensor) -> torch.Tensor:
    """A tensor shaped like `module.weight` seen as `[out, in]` (a view), or an `[out, in]`
    tensor seen in the module's own storage layout: the transpose for Conv1D, else itself."""
    return tensor.T if _stores_in_out(module) else tensor


def in_features(module: nn.Module) -> int:
    """Input width of a projection."""
    return _width(module, "in_features", "nx", "input")


def out_features(module: nn.Module) -> int:
    """Output width of a projection."""
    return _width(module, "out_features", "nf", "output")


def _width(module: nn.Module, linear_name: str, conv1d_name: str, what: str) -> int:
    width = getattr(module, linear_name, None)
    if width is None:
        width = getattr(module, conv1d_name, None)
    if width is None:
        raise SafeSeekError(f"cannot tell the {what} width of {type(module).__name__}")
    return int(width)
