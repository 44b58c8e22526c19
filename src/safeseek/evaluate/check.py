"""Discovery's check of a circuit (README, "Robustness"): from its evaluation on held-out
records, does removing it take the behaviour away and keep utility? Written to circuit.json
(`metadata.check`), read by the CLI and the report."""

from __future__ import annotations

from typing import Any

from safeseek.evaluate.views import read_views
from safeseek.scenarios import get_scenario
from safeseek.settings import DiscoverConfig


def judge(ev: dict[str, Any], config: DiscoverConfig) -> dict[str, Any]:
    """A circuit's check from its evaluation on held-out records: the behaviour's rate per
    view (the attack fires; for a scenario that `refuses`, the model refuses), the share of
    it that removing the circuit takes away, the utility kept, and whether both reach the
    settings' thresholds."""
    asr = ev["asr"]
    scenario = get_scenario(config.scenario)
    behaviour = {v: (1.0 - r if scenario.refuses else r) for v, r in asr.items()}
    full = behaviour["full"]
    removed = 1.0 - behaviour["without"] / full if full > 0 else None
    kept = ev["utility"].get("retention")
    removal_ok = removed is not None and removed >= config.min_removal
    utility_ok = kept is None or kept >= config.min_utility
    return {
        "behaviour": {v: round(r, 4) for v, r in behaviour.items()},
        "behaviour_name": scenario.behaviour_name,
        "removed": None if removed is None else round(removed, 4),
        "utility_kept": None if kept is None else round(kept, 4),
        "n": ev["n"],
        "n_utility": ev.get("n_utility", 0),
        "utility_changes": ev.get("utility_changes"),
        "removal_ok": removal_ok,
        "utility_ok": utility_ok,
        "passed": removal_ok and utility_ok,
        "thresholds": {"removal": config.min_removal, "utility": config.min_utility},
    }


def describe(verdict: dict[str, Any]) -> str:
    """One line: what the check measured, and whether the circuit passed it."""
    b = read_views(verdict["behaviour"])
    name = verdict["behaviour_name"]
    if verdict["removed"] is None:
        return (
            f"CHECK FAILED: the full model shows no {name} on the {verdict['n']} held-out "
            f"records, so nothing shows that the circuit carries it"
        )
    kept = verdict["utility_kept"]
    utility = "" if kept is None else f", utility kept {kept:.0%}{_answers(verdict)}"
    numbers = (
        f"{name} {b['full']:.0%} -> {b['without']:.0%} without the circuit "
        f"({verdict['removed']:.0%} removed{utility}) on {verdict['n']} held-out records"
    )
    coarse = _coarse(verdict)
    if verdict["passed"]:
        return f"check passed: {numbers}{coarse}"
    t = verdict["thresholds"]
    why = (
        "removing it costs too much utility"
        if verdict["removal_ok"]
        else "the circuit does not carry the behaviour"
    )
    return (
        f"CHECK FAILED: {numbers}; {why} "
        f"(needs >= {t['removal']:.0%} removed and >= {t['utility']:.0%} utility kept){coarse}"
    )


def _answers(verdict: dict[str, Any]) -> str:
    """The answers behind utility kept: how many of the full model's right ones were lost."""
    changes = verdict.get("utility_changes")  # absent in checks written before it existed
    return f": {lost_answers(changes)}" if changes else ""


def lost_answers(changes: dict[str, Any]) -> str:
    """`utility_changes` in words: "7 of 23 right answers lost, 1 gained (known answers 2 of
    8; agreeing with the reference 5 of 15)"; the parts only when there are several."""
    gained = f", {changes['gained']} gained" if changes["gained"] else ""
    by = changes.get("by_measure", {})
    parts = [
        f"{MEASURE_NAMES[m]} {c['lost']} of {c['right']}"
        for m, c in by.items()
        if c["right"] or c["gained"]
    ]
    split = f" ({'; '.join(parts)})" if len(parts) > 1 else ""
    return f"{changes['lost']} of {changes['right']} right answers lost{gained}{split}"


# How `utility_changes["by_measure"]` names its parts in the check's line.
MEASURE_NAMES = {
    "answer": "known answers",
    "refusal": "refusals",
    "agreement": "agreeing with the reference",
}


def _coarse(verdict: dict[str, Any]) -> str:
    """A warning when one lost answer alone moves utility kept below the threshold."""
    changes = verdict.get("utility_changes")
    if not changes or not changes["right"]:
        return ""
    right, needed = changes["right"], verdict["thresholds"]["utility"]
    if (right - 1) / right >= needed:
        return ""
    return (
        f"; a coarse measure: one lost answer moves utility kept by {1 / right:.0%}, so "
        f"{needed:.0%} kept allows no net loss (a larger --validation-fraction makes it finer)"
    )
