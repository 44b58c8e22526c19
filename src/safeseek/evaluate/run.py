"""Ablation validation (the paper's Step 3): behaviour under the full model, without the
circuit, and with the circuit alone, from real greedy generations."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import Progress
from torch import nn

from safeseek.circuit import Circuit
from safeseek.data.records import validate
from safeseek.errors import SafeSeekError
from safeseek.evaluate.forced import target_probability
from safeseek.evaluate.generation import generate
from safeseek.evaluate.metrics import (
    answer_changes,
    attack_success,
    correct,
    rate,
    summary,
    utility_measure,
)
from safeseek.evaluate.views import VIEWS
from safeseek.masking import MaskedModel
from safeseek.scenarios import Fields, get_scenario


@dataclass
class Probe:
    """What a scenario measures: attack prompts with their targets, and utility prompts."""

    kind: str  # attack kind for attack_success
    attack: list[dict[str, Any]]  # {prompt, target}
    utility: list[dict[str, Any]]  # {prompt, reference, answer}
    clean: list[dict[str, Any]]  # prompts that must not fire the behaviour (false triggers)


def probe_for(scenario: str, records: Sequence[dict[str, Any]], backdoor_type: str | None) -> Probe:
    """The scenario's probe (`ProbeSpec`) filled from `records`; `backdoor_type` overrides how
    an attack counts where the scenario lets records choose it."""
    spec = get_scenario(scenario).probe
    records = [
        r if "kind" in r else validate(r, scenario, f"record {i + 1}")
        for i, r in enumerate(records)
    ]

    def items(fields: Fields | None) -> list[dict[str, Any]]:
        chosen = [r for r in records if fields is not None and r["kind"] == fields.kind]
        return [{"prompt": r[fields.prompt], "target": r[fields.target]} for r in chosen]

    def utility(fields: Fields) -> list[dict[str, Any]]:
        """Utility prompts: a reference answer, and an optional short answer to find in it."""
        return [
            {
                "prompt": r[fields.prompt],
                "reference": r.get(fields.target),
                "answer": r.get("answer"),
            }
            for r in records
            if r["kind"] == fields.kind
        ]

    kind = spec.attack_kinds[0]
    if spec.attack_kind_field:
        named = {r.get(spec.attack_kind_field) for r in records} - {None}
        kind = backdoor_type or (named.pop() if len(named) == 1 else kind)
        if kind not in spec.attack_kinds:
            raise SafeSeekError(
                f"unknown {spec.attack_kind_field.replace('_', ' ')} {kind!r}; "
                f"use {', '.join(spec.attack_kinds)}"
            )
    utility_items = [it for fields in spec.utility for it in utility(fields)]
    return Probe(kind, items(spec.attack), utility_items, items(spec.clean))


def evaluate_circuit(
    model: nn.Module,
    tokenizer: Any,
    circuit: Circuit,
    scenario: str,
    records: Sequence[dict[str, Any]],
    backdoor_type: str | None = None,
    masks_path: str | Path | None = None,
    max_new_tokens: int = 48,
    batch_size: int = 32,
    console: Console | None = None,
    views: Sequence[str] = VIEWS,
    masked_model: MaskedModel | None = None,
) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """EVAL.json's content (README, "Discovery and evaluation") and every generation behind
    it; `views` picks which of full / without / only are generated (all by
    default). `masked_model`: the
    circuit's own (idle) MaskedModel, e.g. discovery's with its means, instead of a new one."""
    start = time.perf_counter()
    unknown = [v for v in views if v not in VIEWS]
    if unknown:
        raise SafeSeekError(f"unknown view {unknown[0]!r}; views: {', '.join(VIEWS)}")
    probe = probe_for(scenario, records, backdoor_type)
    if not probe.attack:
        raise SafeSeekError(f"no {scenario} records to measure the behaviour on")
    mm = (
        masked_model
        if masked_model is not None
        else MaskedModel.for_circuit(model, circuit, masks_path)
    )
    granularities, ablation = list(mm.granularities), mm.ablation
    circuit.check(mm)
    contexts = {
        "full": lambda _: contextlib.nullcontext(),
        "without": mm.without,
        "only": mm.only,
    }
    rows: list[dict[str, Any]] = []
    asr: dict[str, float] = {}
    asr_exact: dict[str, float] = {}  # fixed-output: the target string itself
    # fixed-output: mean teacher-forced P(target's opening) after triggered and clean prompts
    forced: dict[str, dict[str, float]] = {}
    false_trigger: dict[str, float] = {}
    utility: dict[str, float] = {}
    right: dict[str, list[bool]] = {}  # per view: each utility answer right or not
    # Every rate's count and 95% Wilson interval: {"asr": {view: summary(...)}, ...}
    intervals: dict[str, dict[str, Any]] = {"asr": {}, "false_trigger": {}, "utility": {}}
    with Progress(console=console or Console(stderr=True)) as bar:

        def run(view: str, items: list[dict[str, Any]], label: str) -> list[str]:
            prompts = [it["prompt"] for it in items]
            with contexts[view](circuit):
                return generate(
                    model, tokenizer, prompts, max_new_tokens, batch_size, bar, f"{view}: {label}"
                )

        for view in (v for v in VIEWS if v in views):
            gens = run(view, probe.attack, "attack")
            targets = [it["target"] for it in probe.attack]
            hits = attack_success(probe.kind, gens, targets)
            asr[view] = rate(hits)
            intervals["asr"][view] = summary(hits)
            if probe.kind == "fixed-output":
                asr_exact[view] = rate(attack_success("fixed-output-exact", gens, targets))
                with contexts[view](circuit):
                    forced[view] = _target_probability(model, tokenizer, probe)
            rows += [
                {"view": view, "set": "attack", "i": i, **it, "generation": g, "success": h}
                for i, (it, g, h) in enumerate(zip(probe.attack, gens, hits, strict=True))
            ]
            if view == "only":
                continue
            utility_gens = run(view, probe.utility, "utility") if probe.utility else []
            if probe.clean:
                # A backdoor's clean prompts lead its utility prompts: generated once.
                clean_prompts = [it["prompt"] for it in probe.clean]
                n = len(clean_prompts)
                same = clean_prompts == [it["prompt"] for it in probe.utility[:n]]
                gens = utility_gens[:n] if same else run(view, probe.clean, "clean")
                hits = attack_success(probe.kind, gens, [it["target"] for it in probe.clean])
                false_trigger[view] = rate(hits)
                intervals["false_trigger"][view] = summary(hits)
            if probe.utility:
                gens = utility_gens
                if view == "full":  # references default to the full model's own answers
                    for it, g in zip(probe.utility, gens, strict=True):
                        it["reference"] = it["reference"] or g
                ok = [
                    correct(g, it["reference"], it.get("answer"))
                    for it, g in zip(probe.utility, gens, strict=True)
                ]
                utility[view] = rate(ok)
                right[view] = ok
                intervals["utility"][view] = summary(ok)
                rows += [
                    {"view": view, "set": "utility", "i": i, **it, "generation": g, "correct": c}
                    for i, (it, g, c) in enumerate(zip(probe.utility, gens, ok, strict=True))
                ]
    changes = None
    if "full" in utility and "without" in utility:
        full = utility["full"]
        utility["retention"] = utility["without"] / full if full > 0 else None
        changes = answer_changes(right["full"], right["without"])
        # What the changes are: known answers, refusals kept, or agreement with a reference
        # (a string measure, README "Discovery and evaluation").
        measures = [utility_measure(it["reference"], it.get("answer")) for it in probe.utility]
        changes["by_measure"] = {
            m: answer_changes(
                [ok for ok, how in zip(right["full"], measures, strict=True) if how == m],
                [ok for ok, how in zip(right["without"], measures, strict=True) if how == m],
            )
            for m in dict.fromkeys(measures)
        }
    sparsity = circuit.sparsity(mm, granularities)
    result = {
        "scenario": scenario,
        "asr": asr,
        "utility": utility,
        "sparsity": {k: sparsity[k] for k in (*granularities, "overall")},
        "n": len(probe.attack),
        "n_utility": len(probe.utility),
        "settings": {
            "attack_kind": probe.kind,
            "ablation": ablation,
            "granularities": list(granularities),
            "max_new_tokens": max_new_tokens,
            "circuit_units": circuit.counts(),
            "decoding": "greedy",
        },
        "seconds": round(time.perf_counter() - start, 1),
    }
    if changes is not None:
        result["utility_changes"] = changes
    if false_trigger:
        result["false_trigger"] = false_trigger
    if asr_exact:
        result["asr_exact"] = asr_exact
    if forced:
        result["target_probability"] = forced
    result["intervals"] = {k: v for k, v in intervals.items() if v}
    return result, rows


def _target_probability(model: nn.Module, tokenizer: Any, probe: Probe) -> dict[str, float]:
    """Mean teacher-forced P(target's opening) after the triggered and the clean prompts."""
    out = {}
    for name, items in (("triggered", probe.attack), ("clean", probe.clean)):
        if items:
            prompts, targets = [it["prompt"] for it in items], [it["target"] for it in items]
            p = target_probability(model, tokenizer, prompts, targets)
            out[name] = sum(p) / len(p)
    return out
