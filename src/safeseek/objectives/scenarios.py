"""A scenario's objective: its declared terms (`scenarios/`) as `Term`s that encode records."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from safeseek.data.encode import Encoded, PairEncoder
from safeseek.objectives.base import Objective, Term
from safeseek.scenarios import TermSpec, get_scenario


def _pair(prompt: str, response: str) -> Callable[[PairEncoder, dict[str, Any], str], Encoded]:
    return lambda enc, record, where: enc.pair(record[prompt], record[response], where)


def _preserve(enc: PairEncoder, record: dict[str, Any], where: str) -> Encoded:
    """A preservation example: the record's response, else the prompt's own tokens."""
    if record.get("response"):
        return enc.pair(record["prompt"], record["response"], where)
    ids = enc.prompt_ids(record["prompt"], where)
    return Encoded(input_ids=ids, labels=list(ids))


def _term(spec: TermSpec) -> Term:
    make = _pair(spec.prompt, spec.response) if spec.response else _preserve
    return Term(spec.name, spec.view, spec.loss, spec.weight, spec.kind, make, spec.help)


def objective(scenario: str, weights: dict[str, float] | None = None) -> Objective:
    """The scenario's objective, with some term weights replaced."""
    spec = get_scenario(scenario)
    return Objective(spec.name, tuple(_term(t) for t in spec.terms)).with_weights(weights)
