"""Which parameter entries a circuit owns: the unit-level gradient masks of Safety Circuit Tuning.

A head owns its rows of the query projection, the rows of its key/value head in the key and
value projections, and its input columns of the attention output projection. A neuron owns its
rows of the MLP input projections (gate and up, or fc1) and its input column of the down
projection. A whole-block unit (`(layer, "attn" | "mlp")`) owns every parameter of that block.
A weight unit owns its own entry of the output projection, and nothing else.
Biases follow their rows. Nothing else is owned by any unit: embeddings, norms (Qwen-3's
per-head-dim q/k norms are shared by all heads), output-projection biases and the LM head.

Grouped-query attention: a key/value head is shared by `n_heads / n_kv_heads` query heads. It
counts as owned when *any* of its query heads is in the circuit, so `exclude-circuit` never
moves what a circuit head reads, and `circuit-only` may move the shared K/V of a circuit head
(which the other query heads of its group also read).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import nn

from safeseek.circuit import Circuit
from safeseek.models.adapters import family_of, locate, unwrap
from safeseek.models.geometry import (
    WEIGHT_MATRICES,
    in_features,
    is_projection,
    out_features,
    out_in,
    owned_rows,
    unit_channels,
)


@dataclass
class Owned:
    """The output rows and input columns of one projection that belong to the circuit."""

    rows: torch.Tensor  # bool [out_features]
    cols: torch.Tensor  # bool [in_features]
    entries: torch.Tensor | None = None  # bool [out_features, in_features]: weight units

    def weight_mask(self, module: nn.Module) -> torch.Tensor:
        """Owned entries of the weight, in the module's own storage layout."""
        mask = self.rows[:, None] | self.cols[None, :]  # [out, in]
        if self.entries is not None:
            mask = mask | self.entries
        return out_in(module, mask).contiguous()


@dataclass
class Ownership:
    """Owned rows/columns per projection, and parameters owned whole (block units)."""

    modules: dict[str, Owned] = field(default_factory=dict)
    whole: set[str] = field(default_factory=set)

    def parameter_masks(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """`{parameter name: bool mask of owned entries}` for every parameter owning any."""
        base = unwrap(model)
        named = dict(base.named_parameters())
        masks = {name: torch.ones_like(named[name], dtype=torch.bool) for name in self.whole}
        for name, owned in self.modules.items():
            module = base.get_submodule(name)
            for pname, mask in (("weight", owned.weight_mask(module)), ("bias", owned.rows)):
                full = f"{name}.{pname}"
                if getattr(module, pname, None) is None or full in masks or not mask.any():
                    continue
                masks[full] = mask.to(named[full].device)
        return masks


def _mask(width: int, index: list[int]) -> torch.Tensor:
    mask = torch.zeros(width, dtype=torch.bool)
    mask[index] = True
    return mask


def ownership(model: nn.Module, circuit: Circuit) -> Ownership:
    """The parameter entries `circuit` owns in `model` (see the module docstring)."""
    circuit.check(model)
    _, fam = family_of(model)
    parts = locate(model)
    arch = parts.arch
    base = unwrap(model)
    prefix = fam.layers_path
    result = Ownership()

    def own(
        path: str,
        rows: Sequence[int] = (),
        cols: Sequence[int] = (),
        entries: torch.Tensor | None = None,  # flat indices into the weight seen [out, in]
    ) -> None:
        if not rows and not cols and entries is None:
            return
        module = base.get_submodule(path)
        n_out, n_in = out_features(module), in_features(module)
        owned = result.modules.setdefault(
            path, Owned(torch.zeros(n_out, dtype=torch.bool), torch.zeros(n_in, dtype=torch.bool))
        )
        owned.rows |= _mask(n_out, list(rows))
        owned.cols |= _mask(n_in, list(cols))
        if entries is not None:
            if owned.entries is None:
                owned.entries = torch.zeros(n_out, n_in, dtype=torch.bool)
            owned.entries.view(-1)[entries] = True

    for layer in range(arch.n_layers):
        heads = [h for l_, h in circuit.heads if l_ == layer]
        neurons = [j for l_, j in circuit.neurons if l_ == layer]
        at = f"{prefix}.{layer}"
        for path, layout in fam.head_in if heads else ():
            own(f"{at}.{path}", rows=owned_rows(layout, arch, heads, []))
        own(f"{at}.{fam.attn_out}", cols=unit_channels(arch, "head", heads))
        for path, layout in fam.neuron_in if neurons else ():
            own(f"{at}.{path}", rows=owned_rows(layout, arch, [], neurons))
        own(f"{at}.{fam.mlp_out}", cols=unit_channels(arch, "neuron", neurons))
    for (layer, part), index in circuit.weight_entries(arch).items():
        own(f"{prefix}.{layer}.{getattr(fam, WEIGHT_MATRICES[part][0])}", entries=index)
    for layer, part in circuit.layers:
        block = f"{prefix}.{layer}.{fam.attn_block if part == 'attn' else fam.mlp_block}"
        module = base.get_submodule(block)
        result.whole |= {f"{block}.{n}" for n, _ in module.named_parameters()}
        for name, sub in module.named_modules():
            if is_projection(sub):
                own(f"{block}.{name}", rows=range(out_features(sub)))
    return result
