"""Scenarios: what a safety behaviour is, declared once.

A scenario is one declarative record (`Scenario`): the schema of its records, the terms of its
discovery objective, the probe that evaluation generates from, and the two terms the baselines
score with. Record loading, objectives, evaluation, the check and the baselines all read it from
the registry; adding a scenario is adding one module beside `backdoor.py` or calling `register`
(docs/ARCHITECTURE.md, "Adding a scenario"). Plain data, no torch: the CLI can list scenarios
without loading a model.
"""

from __future__ import annotations

from safeseek.errors import SafeSeekError
from safeseek.scenarios import alignment, backdoor, custom
from safeseek.scenarios.spec import LOSSES, VIEWS, Fields, ProbeSpec, Scenario, TermSpec

SCENARIOS: dict[str, Scenario] = {}


def register(scenario: Scenario) -> Scenario:
    """Add `scenario` to the registry (a name already taken is an error)."""
    if scenario.name in SCENARIOS:
        raise SafeSeekError(f"a scenario named {scenario.name!r} is already registered")
    SCENARIOS[scenario.name] = scenario
    return scenario


def get_scenario(name: str) -> Scenario:
    """The registered scenario `name`, or one line naming the ones there are."""
    if name not in SCENARIOS:
        raise SafeSeekError(f"unknown scenario {name!r}; choose from {', '.join(SCENARIOS)}")
    return SCENARIOS[name]


for _module in (backdoor, alignment, custom):
    register(_module.SCENARIO)

__all__ = [
    "LOSSES",
    "SCENARIOS",
    "VIEWS",
    "Fields",
    "ProbeSpec",
    "Scenario",
    "TermSpec",
    "get_scenario",
    "register",
]
