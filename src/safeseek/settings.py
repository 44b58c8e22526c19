"""Settings of long-running jobs, kept free of heavy imports so the CLI can show defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

# Measured on SmolLM2-135M organisms: 0.05 finds a 0.07% circuit that removes a planted
# fixed-output backdoor; trained-in refusal is more distributed, and at 0.05 the circuit found
# left refusals in place (ASR 0% -> 1.9%), at 0.01 removing it raised ASR 0% -> 97.4%.
SPARSITY_WEIGHTS = {"backdoor": 0.05, "alignment": 0.01, "custom": 0.05}


@dataclass
class DiscoverConfig:
    """Every setting that changes the result; saved with the run and checked on resume."""

    scenario: str
    granularities: tuple[str, ...] = ("head", "neuron")
    parametrization: str = "ste"
    ablation: str = "zero"
    sparsity_target: float | None = None  # fraction of units; None: penalty mode
    # Penalty mode: loss per unit in the circuit; a unit joins only if it is worth more.
    # None: the scenario's default (SPARSITY_WEIGHTS).
    sparsity_weight: float | None = None
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

    def __post_init__(self) -> None:
        if self.sparsity_weight is None:
            self.sparsity_weight = SPARSITY_WEIGHTS.get(self.scenario, 0.05)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["granularities"] = list(self.granularities)
        return out
