"""Patching baselines: what removing a unit does to the behaviour's loss.

- activation patching: ablate each head (and each group of neurons) alone, exactly, and
  measure the rise in the behaviour's cross-entropy -- one forward pass per unit;
- attribution patching (EAP-style, at node level): the first-order estimate of the same rise
  when a unit is patched to its mean over the utility (clean / benign) inputs, i.e.
  gradient x (activation - clean mean), for every unit from one backward pass;
- integrated gradients (EAP-IG at node level, Hanna et al. 2024): the same difference times
  the gradient averaged along the straight path from the clean mean to the activation, one
  layer's units moved together while the other layers stay intact (the "activations" variant
  of EAP-IG, as in Marks et al. 2024): exact for every unit whose effect is linear along the
  path, where attribution patching takes the gradient at the path's end only.

All return the rise in mean cross-entropy per behaviour token: higher = more of the behaviour.
"""

from __future__ import annotations

import torch
from rich.progress import Progress

from safeseek.baselines.common import Examples, batches, mean_loss, summed_loss
from safeseek.circuit import Circuit
from safeseek.masking import MaskedModel


def activation_patching(
    model: torch.nn.Module,
    pad_id: int,
    ex: Examples,
    granularities: tuple[str, ...],
    neuron_group: int = 128,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """Exact single-unit ablations (zero). Neurons are ablated `neuron_group` consecutive
    neurons of a layer at a time (each member gets the group's score): one pass per neuron
    would take tens of thousands of passes."""
    mm = MaskedModel(model, granularities=granularities)
    arch = mm.arch
    base = mean_loss(model, ex.behaviour, pad_id)
    scores = {g: torch.zeros(arch.n_layers, arch.units_per_layer(g)) for g in granularities}
    jobs: list[tuple[str, int, slice]] = []
    for g in granularities:
        step = neuron_group if g == "neuron" else 1
        for layer in range(arch.n_layers):
            for start in range(0, arch.units_per_layer(g), step):
                jobs.append((g, layer, slice(start, start + step)))
    task = progress.add_task("activation patching", total=len(jobs)) if progress else None
    for g, layer, units in jobs:
        members = [(layer, u) for u in range(arch.units_per_layer(g))[units]]
        circuit = Circuit(heads=members) if g == "head" else Circuit(neurons=members)
        with mm.without(circuit):
            scores[g][layer, units] = mean_loss(model, ex.behaviour, pad_id) - base
        if progress is not None:
            progress.advance(task)
    return scores


def attribution_patching(
    model: torch.nn.Module,
    pad_id: int,
    ex: Examples,
    granularities: tuple[str, ...],
) -> dict[str, torch.Tensor]:
    """d(behaviour loss)/d(keep) of every unit at keep = 1, with the unit's clean mean as the
    patched value, negated: the first-order rise of the loss when the unit is patched."""
    device = next(model.parameters()).device
    mm = _mean_ablated(model, pad_id, ex, granularities, init_logit=-1.0)
    total = sum(e.scored for e in ex.behaviour)
    with mm.learned():  # every unit kept; the straight-through gradient reaches each logit
        for batch in batches(ex.behaviour, pad_id, device):
            (summed_loss(model, mm.parts, batch) / total).backward()
    slope = torch.sigmoid(torch.tensor(-1.0)) * (1 - torch.sigmoid(torch.tensor(-1.0)))
    # keep = 1 - sigmoid(logit): d loss / d logit = -slope * d loss / d keep, and patching
    # (keep 1 -> 0) changes the loss by about -d loss / d keep = (d loss / d logit) / slope.
    return {g: (m.logits.grad / slope).detach().cpu() for g, m in mm.masks.items()}


def integrated_gradients(
    model: torch.nn.Module,
    pad_id: int,
    ex: Examples,
    granularities: tuple[str, ...],
    steps: int = 5,
    progress: Progress | None = None,
) -> dict[str, torch.Tensor]:
    """-integral over keep in [0, 1] of d(behaviour loss)/d(keep) of each unit, each unit
    patched toward its clean mean (keep 0) together with the rest of its layer, by the midpoint
    rule over `steps` points: the loss rise of patching the unit, attributed along the path.
    The scores of one layer's units sum to the rise of patching the whole layer (completeness)
    as `steps` grows. Costs layers x steps forward+backward passes over the examples."""
    device = next(model.parameters()).device
    mm = _mean_ablated(model, pad_id, ex, granularities)
    arch = mm.arch
    whole = {
        g: torch.ones(arch.n_layers, arch.units_per_layer(g), device=device) for g in granularities
    }
    scores = {g: torch.zeros(arch.n_layers, arch.units_per_layer(g)) for g in granularities}
    total = sum(e.scored for e in ex.behaviour)
    task = (
        progress.add_task("integrated gradients", total=arch.n_layers * steps) if progress else None
    )
    for layer in range(arch.n_layers):
        for k in range(steps):
            alpha = (k + 0.5) / steps
            rows = {
                g: torch.full_like(w[layer], alpha, requires_grad=True) for g, w in whole.items()
            }
            for batch in batches(ex.behaviour, pad_id, device):
                # Only this layer's keep has a gradient, so backward stops at this layer.
                keep = {
                    g: torch.cat([w[:layer], rows[g][None], w[layer + 1 :]])
                    for g, w in whole.items()
                }
                with mm.scaled(keep):
                    (summed_loss(model, mm.parts, batch) / total).backward()
            for g, row in rows.items():
                scores[g][layer] -= row.grad.cpu() / steps
            if progress is not None:
                progress.advance(task)
    return scores


def _mean_ablated(
    model: torch.nn.Module,
    pad_id: int,
    ex: Examples,
    granularities: tuple[str, ...],
    **kwargs: float,
) -> MaskedModel:
    """Masks whose ablated value is each unit's mean over the clean (utility) inputs, the
    patched value of attribution patching and EAP-IG (the behaviour inputs when there are none)."""
    device = next(model.parameters()).device
    reference = [
        {k: b[k] for k in ("input_ids", "attention_mask")}
        for b in batches(ex.utility or ex.behaviour, pad_id, device)
    ]
    return MaskedModel(
        model, granularities=granularities, ablation="mean", reference=reference, **kwargs
    )
