"""Which parameter entries a circuit owns: the unit-level gradient masks of Safety Circuit Tuning.

A head owns its rows of the query projection, the rows of its key/value head in the key and
value projections, and its input columns of the attention output projection. A neuron owns its
rows of the MLP input projections (gate and up, or fc1) and its input column of the down
projection. A whole-block unit (`(layer, "attn" | "mlp")`) owns every parameter of that block.
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
from transformers.pytorch_utils import Conv1D

from safeseek.circuit import Circuit
from safeseek.errors import SafeSeekError
from safeseek.models.adapters import Architecture, family_of, in_features, locate, unwrap


def out_features(module: nn.Module) -> int:
    """Output width of a Linear, a PEFT-wrapped Linear, or GPT-2's transposed Conv1D."""
    width = getattr(module, "out_features", None)
    if width is None:
        width = getattr(module, "nf", None)
    if width is None:
        raise SafeSeekError(f"cannot tell the output width of {type(module).__name__}")
    return int(width)


@dataclass
class Owned:
    """The output rows and input columns of one projection that belong to the circuit."""

    rows: torch.Tensor  # bool [out_features]
    cols: torch.Tensor  # bool [in_features]

    def weight_mask(self, module: nn.Module) -> torch.Tensor:
        """Owned entries of the weight, in the module's own storage layout."""
        mask = self.rows[:, None] | self.cols[None, :]  # [out, in]
        return mask.T.contiguous() if isinstance(module, Conv1D) else mask


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


def _blocks(index: list[int], width: int) -> list[int]:
    return [i * width + d for i in index for d in range(width)]


def _rows(layout: str, arch: Architecture, heads: list[int], neurons: list[int]) -> list[int]:
    """Output rows of a projection with `layout` that the given heads/neurons own."""
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
    prefix = f"{fam.backbone}.{fam.layers}"
    result = Ownership()

    def own(path: str, rows: Sequence[int] = (), cols: Sequence[int] = ()) -> None:
        if not rows and not cols:
            return
        module = base.get_submodule(path)
        owned = result.modules.setdefault(
            path,
            Owned(
                torch.zeros(out_features(module), dtype=torch.bool),
                torch.zeros(in_features(module), dtype=torch.bool),
            ),
        )
        owned.rows |= _mask(len(owned.rows), list(rows))
        owned.cols |= _mask(len(owned.cols), list(cols))

    for layer in range(arch.n_layers):
        heads = [h for l_, h in circuit.heads if l_ == layer]
        neurons = [j for l_, j in circuit.neurons if l_ == layer]
        at = f"{prefix}.{layer}"
        for path, layout in fam.head_in if heads else ():
            own(f"{at}.{path}", rows=_rows(layout, arch, heads, []))
        own(f"{at}.{fam.attn_out}", cols=_blocks(heads, arch.head_dim))
        for path, layout in fam.neuron_in if neurons else ():
            own(f"{at}.{path}", rows=_rows(layout, arch, [], neurons))
        own(f"{at}.{fam.mlp_out}", cols=neurons)
    for layer, part in circuit.layers:
        block = f"{prefix}.{layer}.{fam.attn_block if part == 'attn' else fam.mlp_block}"
        module = base.get_submodule(block)
        result.whole |= {f"{block}.{n}" for n, _ in module.named_parameters()}
        for name, sub in module.named_modules():
            if isinstance(sub, nn.Linear | Conv1D):
                own(f"{block}.{name}", rows=range(out_features(sub)))
    return result
