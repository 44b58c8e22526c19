"""Settings of long-running jobs, kept free of heavy imports so the CLI can show defaults."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from safeseek.errors import SafeSeekError
from safeseek.scenarios import get_scenario


@dataclass
class DiscoverConfig:
    """Every setting that changes the result; saved with the run and checked on resume."""

    scenario: str
    granularities: tuple[str, ...] = ("head", "neuron")
    parametrization: str = "ste"
    # Mean: a removed unit outputs its mean over the preservation records (benign / clean
    # prompts). Zero ablation also removes a unit's constant share of the residual stream,
    # which the clean task needs: on tiny organisms 1 and 3 no head/neuron circuit removes the
    # backdoor with >= 95% utility under zero ablation, and mean ablation finds one on every
    # seed (README "Robustness").
    ablation: str = "mean"
    sparsity_target: float | None = None  # fraction of units; None: penalty mode
    # The frontier in one run: a sparsity target per size, largest first, `steps` steps each,
    # every stage starting from the circuit the one before ended with; the circuit of each size
    # is checked and saved (README, "The frontier"). None: one circuit.
    sizes: tuple[float, ...] | None = None
    # Penalty mode: loss per unit in the circuit; a unit joins only if it is worth more.
    # None: the scenario's default (`Scenario.sparsity_weight`, measured per scenario).
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
    # The preservation (KL) terms compare each view with the full model, whose distribution
    # is computed once per example and kept: the likeliest `reference_tokens` tokens at each
    # labelled position and the mass of the rest (None: full rows, exact, vocabulary x 4 bytes
    # a position). 128: on the three demo organisms the KL term is within 0.7% of the exact one
    # and its gradient at cosine 1.0000 (README, "Discovery and evaluation").
    reference_tokens: int | None = 128
    # Held-out records (this share of each record kind, at most `validation_max` per kind, the
    # same split for every seed) on which the binarised circuit's objective is measured every
    # `check_every` steps; the run keeps the best circuit seen, not the last one, and stops
    # once `patience` checks in a row brought no improvement and the circuit's size has settled
    # (not before `min_steps`; see `Discovery.check`).
    # validation_fraction 0: no split, the last circuit is kept and every step runs. 48, not
    # 24: a utility made of many small skills (the tiny organism's 25 letters) needs the
    # held-out records to see most of them, or the check passes circuits that break the rest.
    validation_fraction: float = 0.2
    validation_max: int = 48
    check_every: int = 10
    patience: int | None = 5
    min_steps: int = 60
    # At the end of a run the kept circuit is checked on the validation records by greedy
    # generation (`check_tokens` new tokens): it carries the behaviour when removing it takes
    # away at least `min_removal` of the behaviour and keeps `min_utility` of clean utility.
    # A circuit that fails is grown, at most `retries` times (penalty mode): discovery goes on
    # from it, keeping its units, with the sparsity weight times `retry_factor` when it
    # removes too little, else with the preservation terms divided by `retry_factor`.
    check_tokens: int = 16
    min_removal: float = 0.9
    min_utility: float = 0.95
    retries: int = 3
    retry_factor: float = 0.25

    def __post_init__(self) -> None:
        if self.sizes is not None:
            self.sizes = tuple(sorted({float(x) for x in self.sizes}, reverse=True))
        scenario = get_scenario(self.scenario)
        if self.sparsity_weight is None:
            self.sparsity_weight = scenario.sparsity_weight
        terms = [t.name for t in scenario.terms]
        unknown = [name for name in self.weights if name not in terms]
        if unknown:
            raise SafeSeekError(
                f"unknown {self.scenario} term {unknown[0]!r}; terms: {', '.join(terms)}"
            )
        problems = [
            (self.steps < 1, f"steps must be at least 1 (got {self.steps})"),
            (self.batch_size < 1, f"batch size must be at least 1 (got {self.batch_size})"),
            (self.lr <= 0, f"lr must be positive (got {self.lr})"),
            (
                self.reference_tokens is not None and self.reference_tokens < 1,
                f"reference tokens must be at least 1, or None for full rows "
                f"(got {self.reference_tokens})",
            ),
            (self.sparsity_weight < 0, f"sparsity weight must be >= 0 ({self.sparsity_weight})"),
            (
                self.sizes is not None and self.sparsity_target is not None,
                "give sizes or a sparsity target, not both",
            ),
            (
                self.sizes is not None and not all(0 < x < 1 for x in self.sizes or (0,)),
                f"sizes are fractions of units in (0, 1) (got {self.sizes})",
            ),
            (
                self.sparsity_target is not None and not 0 < self.sparsity_target < 1,
                f"sparsity target is a fraction of units in (0, 1) (got {self.sparsity_target})",
            ),
            (
                not 0 <= self.validation_fraction < 1,
                f"validation fraction must be in [0, 1) (got {self.validation_fraction})",
            ),
            (self.check_every < 1, f"check every must be at least 1 (got {self.check_every})"),
            (self.min_steps < 0, f"min steps must be >= 0 (got {self.min_steps})"),
            (
                self.patience is not None and self.patience < 1,
                f"patience must be at least 1 (got {self.patience}; --patience 0 never stops "
                "early)",
            ),
            (self.retries < 0, f"retries must be >= 0 (got {self.retries})"),
            (
                not 0 < self.retry_factor <= 1,
                f"retry factor must be in (0, 1] (got {self.retry_factor})",
            ),
            (
                not (0 <= self.min_removal <= 1 and 0 <= self.min_utility <= 1),
                "the check's thresholds (min removal, min utility) are fractions in [0, 1]",
            ),
        ]
        for bad, message in problems:
            if bad:
                raise SafeSeekError(message)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["granularities"] = list(self.granularities)
        if self.sizes is None:  # runs keyed before sizes existed keep their key
            del out["sizes"]
        else:
            out["sizes"] = list(self.sizes)
        return out

    @property
    def targets(self) -> tuple[float | None, ...]:
        """The sparsity target of each stage: the sizes, or the one target (None: penalty)."""
        return self.sizes if self.sizes is not None else (self.sparsity_target,)
