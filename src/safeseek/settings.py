"""Settings of long-running jobs, kept free of heavy imports so the CLI can show defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass
class DiscoverConfig:
    """Every setting that changes the result; saved with the run and checked on resume."""

    scenario: str
    granularities: tuple[str, ...] = ("head", "neuron")
    parametrization: str = "ste"
    ablation: str = "zero"
    sparsity_target: float | None = None  # fraction of units; None: penalty mode
    # Penalty mode: loss per unit in the circuit; a unit joins only if it is worth more.
    sparsity_weight: float = 0.05
    lagrangian_lr: float = 1.0
    lr: float = 0.1
    # Adam moves every logit by about lr a step whatever its gradient, so a unit needs about
    # -init_logit / lr consistent steps to join: noise alone does not switch units on.
    init_logit: float = -2.0
    steps: int = 200
    batch_size: int = 8
    seed: int = 0
    max_length: int = 512
    # Behaviour shows in the first tokens of a response; longer ones are cut for speed.
    max_response_tokens: int | None = 32
    weights: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["granularities"] = list(self.granularities)
        return out
