"""The circuit anchor of Safety Circuit Tuning: a term that keeps what the circuit computes.

Freezing a circuit's weights does not keep its function: a fine-tune changes the residual
stream the circuit reads, so its units compute something else (Wei et al. 2024 found frozen
safety neurons protect nothing). The anchor adds to the training loss

    weight * mean over positions t and channels c of (a_c(x_t) - a_c^0(x_t))^2 / s_c

where `a_c` are the circuit's unit activations (a head's slice of the attention output
projection's input, a neuron's input to the down projection) on anchor prompts (e.g. harmful
requests the circuit should keep refusing), `a_c^0` the same before tuning, computed once, and
`s_c` the mean of `a_c^0 ^ 2` over the anchor positions. Normalising each channel by its own
scale matters: a circuit can hold "massive activation" channels (in SmolLM2's alignment
circuit, 10 of 914 channels carried 99.9% of the squared activation, 98% of it at the first
position), which a single shared scale lets drown out every other unit. See README, "Safety
Circuit Tuning".
"""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator, Sequence

import torch
from torch import nn

from safeseek.circuit import Circuit
from safeseek.data.encode import Encoded, pad
from safeseek.distributed import rank_and_world, sum_over_processes
from safeseek.errors import SafeSeekError
from safeseek.models.adapters import locate
from safeseek.models.geometry import ModelParts, unit_channels
from safeseek.training import autocast_for


def _sites(parts: ModelParts, circuit: Circuit) -> list[tuple[nn.Module, torch.Tensor]]:
    """(module whose input holds the units, channel index) for every layer with circuit units."""
    if circuit.layers or circuit.weights:
        raise SafeSeekError(
            "the anchor keeps head and neuron activations; this circuit has layer or weight "
            "units (anchor a head/neuron circuit, or tune without --anchor)"
        )
    sites = []
    for granularity, modules in (("head", parts.attn_out), ("neuron", parts.mlp_out)):
        for layer, module in enumerate(modules):
            units = [u for l_, u in circuit.units(granularity) if l_ == layer]
            if units:
                channels = unit_channels(parts.arch, granularity, units)
                sites.append((module, torch.tensor(channels, dtype=torch.long)))
    if not sites:
        raise SafeSeekError("the anchor needs a circuit with heads or neurons")
    return sites


class CircuitAnchor:
    """The anchor term for one model, circuit and set of anchor examples (see module doc)."""

    def __init__(
        self,
        model: nn.Module,
        circuit: Circuit,
        examples: Sequence[Encoded],
        pad_id: int,
        weight: float,
        batch_size: int = 8,
        seed: int = 0,
    ) -> None:
        if not examples:
            raise SafeSeekError("the anchor needs at least one anchor prompt")
        if weight <= 0:
            raise SafeSeekError(f"the anchor weight must be positive, got {weight}")
        self.parts = locate(model)
        self.sites = _sites(self.parts, circuit)
        self.examples = list(examples)
        self.pad_id, self.weight, self.batch_size = pad_id, weight, batch_size
        self.rng = random.Random(seed)
        self.order: list[int] = []
        self.history: list[float] = []
        with torch.no_grad(), autocast_for(model):
            self.reference = [
                row[: len(e.input_ids)].float().cpu()
                for i in range(0, len(self.examples), batch_size)
                for e, row in zip(
                    self.examples[i : i + batch_size],
                    self.activations(self.examples[i : i + batch_size]),
                    strict=True,
                )
            ]
        squares = torch.cat(self.reference).pow(2).mean(0)  # [channels]
        # a channel that is ~0 on every anchor position is measured on the circuit's scale
        self.scale = squares.clamp(min=1e-6 * float(squares.mean()) or 1e-12)

    @contextlib.contextmanager
    def _captured(self) -> Iterator[dict[int, torch.Tensor]]:
        found: dict[int, torch.Tensor] = {}

        def hook(site: int, channels: torch.Tensor):
            def keep(module: nn.Module, args: tuple) -> None:
                found[site] = args[0][..., channels.to(args[0].device)]

            return keep

        handles = [m.register_forward_pre_hook(hook(i, ch)) for i, (m, ch) in enumerate(self.sites)]
        try:
            yield found
        finally:
            for h in handles:
                h.remove()

    def activations(self, examples: Sequence[Encoded]) -> torch.Tensor:
        """`[batch, tokens, channels]`: the circuit's unit activations (right-padded), heads
        of every layer first, then neurons, each in layer order."""
        batch = pad(list(examples), self.pad_id)
        backbone = self.parts.backbone
        device = next(backbone.parameters()).device
        training = backbone.training
        backbone.eval()  # no dropout: compare like with like (the reference had none)
        try:
            with self._captured() as found:
                backbone(
                    input_ids=batch["input_ids"].to(device),
                    attention_mask=batch["attention_mask"].to(device),
                    use_cache=False,
                )
        finally:
            backbone.train(training)
        return torch.cat([found[i] for i in range(len(self.sites))], dim=-1)

    def loss(self) -> torch.Tensor:
        """The anchor term on the next batch of anchor examples (this process's share of it,
        normalised by the whole batch's positions, so gradients summed over processes match
        one process)."""
        if len(self.order) < self.batch_size:
            extra = list(range(len(self.examples)))
            self.rng.shuffle(extra)
            self.order += extra
        idx, self.order = self.order[: self.batch_size], self.order[self.batch_size :]
        rank, world = rank_and_world()
        mine = idx[rank::world]
        stand_in = not mine
        mine = mine or idx[:1]
        got = self.activations([self.examples[i] for i in mine]).float()
        scale = self.scale.to(got.device)
        total = got.new_zeros(())
        for row, i in enumerate(mine):
            ref = self.reference[i].to(got.device)
            total = total + ((got[row, : ref.shape[0]] - ref).pow(2) / scale).sum()
        cells = sum(self.reference[i].shape[0] for i in idx) * scale.numel()
        term = self.weight * total / cells
        term = term * 0 if stand_in else term
        self.history.append(sum_over_processes(term.detach()).item())
        return term
