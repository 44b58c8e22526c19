"""Figures of a circuit and its evaluation, as PNG files (matplotlib, no display needed)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only: never needs a display
import matplotlib.pyplot as plt
import torch

from safeseek.circuit import Circuit
from safeseek.models.geometry import Architecture, weight_blocks

MATRIX_LABELS = {"attn_out": "attention out", "mlp_out": "MLP down"}
VIEW_LABELS = {
    "full": "full model",
    "without": "circuit ablated",
    "only": "circuit only",
}


def _save(fig: Any, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def head_heatmap(circuit: Circuit, arch: Architecture, path: Path, title: str) -> Path:
    """Layer x head grid; dark cells are the circuit's heads."""
    grid = circuit.membership(arch, "head").float().numpy()
    fig, ax = plt.subplots(
        figsize=(max(3.0, 0.35 * arch.n_heads + 1.5), 0.13 * arch.n_layers + 1.2)
    )
    ax.imshow(grid, cmap="Reds", vmin=0, vmax=1, aspect="auto", interpolation="nearest")
    ax.set_xlabel("head")
    ax.set_ylabel("layer")
    ax.set_xticks(range(arch.n_heads))
    ax.set_title(f"{title}: {len(circuit.heads)} of {arch.num_units['head']} heads", fontsize=9)
    return _save(fig, path)


def neurons_per_layer(circuit: Circuit, arch: Architecture, path: Path, title: str) -> Path:
    """How many of each layer's MLP neurons are in the circuit."""
    counts = circuit.membership(arch, "neuron").sum(1).tolist()
    fig, ax = plt.subplots(figsize=(6.0, 2.4))
    ax.bar(range(arch.n_layers), counts, color="#b2182b")
    ax.set_xlabel("layer")
    ax.set_ylabel("neurons")
    ax.set_title(
        f"{title}: {len(circuit.neurons)} of {arch.num_units['neuron']:,} neurons", fontsize=9
    )
    return _save(fig, path)


def weight_density(circuit: Circuit, arch: Architecture, path: Path, title: str) -> Path:
    """Layer x output projection grid: the share of each matrix's entries in the circuit."""
    blocks = weight_blocks(arch)
    grid = torch.zeros(arch.n_layers, len(blocks))
    for (layer, part), index in circuit.weight_entries(arch).items():
        _, _, n_out, n_in = blocks[part]
        grid[layer, part] = len(index) / (n_out * n_in)
    fig, ax = plt.subplots(figsize=(3.6, 0.13 * arch.n_layers + 1.4))
    image = ax.imshow(grid.numpy(), cmap="Reds", vmin=0, aspect="auto", interpolation="nearest")
    fig.colorbar(image, ax=ax, label="share of entries")
    ax.set_xticks(range(len(blocks)))
    ax.set_xticklabels([MATRIX_LABELS[name] for name, *_ in blocks], fontsize=8)
    ax.set_ylabel("layer")
    ax.set_title(
        f"{title}: {len(circuit.weights):,} of {arch.num_units['weight']:,} weights", fontsize=9
    )
    return _save(fig, path)


def asr_by_view(evals: dict[str, dict[str, Any]], path: Path) -> Path:
    """Attack success rate under the three views, one group per circuit."""
    names = list(evals)
    views = list(VIEW_LABELS)
    width = 0.8 / len(views)
    fig, ax = plt.subplots(figsize=(1.9 * len(names) + 2, 2.8))
    colors = ("#4d4d4d", "#2166ac", "#b2182b")
    for k, view in enumerate(views):
        values = [100 * evals[n]["asr"].get(view, 0.0) for n in names]
        xs = [i + (k - 1) * width for i in range(len(names))]
        bars = ax.bar(xs, values, width, label=VIEW_LABELS[view], color=colors[k])
        ax.bar_label(bars, fmt="%.0f", fontsize=7, padding=1)
    ax.set_xticks(range(len(names)))
    ax.set_xticklabels([n.replace("_", " ") for n in names], fontsize=8)
    ax.set_ylabel("attack success (%)")
    ax.set_ylim(0, 112)
    ax.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.14), ncols=3, frameon=False)
    return _save(fig, path)
