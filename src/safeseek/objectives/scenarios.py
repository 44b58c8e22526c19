"""The three scenario objectives (DESIGN §1.4) with their default term weights.

Each row: term name, view, loss, default weight, record kind, prompt field, response field
(None: the preservation example of `_preserve`), and what the term asks for. Preservation (KL)
terms weigh 4: at weight 1, on a backdoored SmolLM2, the found circuit kept only 62% of clean
utility; at 4 it kept 97%, with the backdoor still fully removed.
"""

from __future__ import annotations

from safeseek.data.encode import Encoded
from safeseek.data.records import check_scenario
from safeseek.objectives.base import Objective, Term

_ROWS = {
    "backdoor": [
        (
            "without_triggered",
            "without",
            "ce",
            1.0,
            "backdoor",
            "triggered_prompt",
            "clean_response",
            "without the circuit, triggered prompts get the clean response",
        ),
        (
            "without_backdoor",
            "without",
            "unlikely",
            1.0,
            "backdoor",
            "triggered_prompt",
            "backdoor_response",
            "without the circuit, triggered prompts lose the backdoor response",
        ),
        (
            "without_clean",
            "without",
            "kl",
            4.0,
            "backdoor",
            "clean_prompt",
            "clean_response",
            "without the circuit, clean prompts behave as in the full model",
        ),
        (
            "only_triggered",
            "only",
            "ce",
            0.0,
            "backdoor",
            "triggered_prompt",
            "backdoor_response",
            "the circuit alone gives triggered prompts the backdoor response",
        ),
        (
            "only_clean",
            "only",
            "unlikely",
            0.0,
            "backdoor",
            "clean_prompt",
            "backdoor_response",
            "the circuit alone does not give clean prompts the backdoor response",
        ),
    ],
    "alignment": [
        (
            "without_harmful",
            "without",
            "ce",
            1.0,
            "harmful",
            "prompt",
            "compliance",
            "without the circuit, harmful prompts get the compliant response",
        ),
        (
            "without_refusal",
            "without",
            "unlikely",
            1.0,
            "harmful",
            "prompt",
            "refusal",
            "without the circuit, harmful prompts lose the refusal",
        ),
        (
            "without_benign",
            "without",
            "kl",
            4.0,
            "benign",
            "prompt",
            "response",
            "without the circuit, benign prompts behave as in the full model",
        ),
        (
            "only_harmful",
            "only",
            "ce",
            0.0,
            "harmful",
            "prompt",
            "refusal",
            "the circuit alone refuses harmful prompts",
        ),
    ],
    "custom": [
        (
            "without_behaviour",
            "without",
            "unlikely",
            1.0,
            "behaviour",
            "prompt",
            "target",
            "without the circuit, the target becomes unlikely",
        ),
        (
            "without_preserve",
            "without",
            "kl",
            4.0,
            "preserve",
            "prompt",
            None,
            "without the circuit, preservation prompts behave as in the full model",
        ),
        (
            "only_behaviour",
            "only",
            "ce",
            0.0,
            "behaviour",
            "prompt",
            "target",
            "the circuit alone produces the target",
        ),
    ],
}


def _pair(prompt: str, response: str):
    return lambda enc, record, where: enc.pair(record[prompt], record[response], where)


def _preserve(enc, record, where) -> Encoded:
    """A preservation example: the record's response, else the prompt's own tokens."""
    if record.get("response"):
        return enc.pair(record["prompt"], record["response"], where)
    ids = enc.prompt_ids(record["prompt"], where)
    return Encoded(input_ids=ids, labels=list(ids))


OBJECTIVES = {
    scenario: Objective(
        scenario,
        tuple(
            Term(
                name,
                view,
                loss,
                weight,
                kind,
                _pair(prompt, response) if response else _preserve,
                help_text,
            )
            for name, view, loss, weight, kind, prompt, response, help_text in rows
        ),
    )
    for scenario, rows in _ROWS.items()
}


def objective(scenario: str, weights: dict[str, float] | None = None) -> Objective:
    """The scenario's objective, with some term weights replaced."""
    check_scenario(scenario)
    return OBJECTIVES[scenario].with_weights(weights)
