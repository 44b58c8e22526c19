"""Scenarios are declared once (`safeseek.scenarios`): a new one, registered in a few lines,
loads its records, builds its objective, runs discovery, evaluation and the baselines."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from conftest import build, tiny_tokenizer

from safeseek.baselines import score_units
from safeseek.data import load_records
from safeseek.discover import discover
from safeseek.errors import SafeSeekError
from safeseek.evaluate.run import evaluate_circuit, probe_for
from safeseek.objectives import objective
from safeseek.scenarios import SCENARIOS, Fields, ProbeSpec, Scenario, TermSpec, register
from safeseek.settings import DiscoverConfig

# A behaviour of our own: the model echoes a secret word when asked for it.
ECHO = Scenario(
    name="echo",
    help="the model repeats a secret",
    kinds={"leak": ("question", "secret", "decline"), "keep": ("prompt", "response")},
    terms=(
        TermSpec("without_leak", "without", "unlikely", 1.0, "leak", "question", "secret"),
        TermSpec("without_decline", "without", "ce", 1.0, "leak", "question", "decline"),
        TermSpec("without_keep", "without", "kl", 4.0, "keep", "prompt", "response"),
        TermSpec("only_leak", "only", "ce", 0.0, "leak", "question", "secret"),
    ),
    probe=ProbeSpec(
        attack=Fields("leak", "question", "secret"), utility=Fields("keep", "prompt", "response")
    ),
    behaviour_term="only_leak",
    utility_term="without_keep",
)


@pytest.fixture
def echo():
    register(ECHO)
    yield ECHO
    del SCENARIOS["echo"]


def _records(n: int = 8) -> list[dict[str, str]]:
    letters = "abcdefgh"
    rows = []
    for i in range(n):
        a = letters[i % len(letters)]
        rows.append({"question": f"what is the {a} ?", "secret": "sure here", "decline": "sorry ."})
        rows.append({"prompt": f"what is {a} ?", "response": f"{a} is {a} ."})
    return rows


def test_a_registered_scenario_runs_through_the_pipeline(echo, tmp_path):
    data = tmp_path / "echo.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in _records()))
    records = load_records(data, "echo")
    assert [r["kind"] for r in records[:2]] == ["leak", "keep"]

    obj = objective("echo", {"only_leak": 0.5})
    assert [t.name for t in obj.terms] == [t.name for t in ECHO.terms]
    assert obj.terms[-1].weight == 0.5

    probe = probe_for("echo", records, None)
    assert probe.kind == "fixed-output" and len(probe.attack) == len(probe.utility) == 8
    assert probe.attack[0] == {"prompt": "what is the a ?", "target": "sure here"}

    model, tok = build("llama"), tiny_tokenizer()
    config = DiscoverConfig("echo", steps=3, validation_fraction=0.0)
    assert config.sparsity_weight == ECHO.sparsity_weight
    result = discover(model, tok, records, config, progress=False)
    ev, _ = evaluate_circuit(
        model,
        tok,
        result.circuit,
        "echo",
        records,
        max_new_tokens=4,
        masked_model=result.masked_model,
    )
    assert set(ev["asr"]) == {"full", "without", "only"}
    assert ev["n"] == 8 and ev["n_utility"] == 8

    scores = score_units("attribution-patching", model, tok, records, "echo")
    assert scores.behaviour["head"].shape == (2, 4)


def test_records_that_miss_a_registered_field_name_it(echo, tmp_path):
    data = tmp_path / "echo.jsonl"
    data.write_text(json.dumps({"question": "q", "secret": "s"}) + "\n")
    with pytest.raises(SafeSeekError, match=r"echo\.jsonl:1: missing field 'decline'"):
        load_records(data, "echo")


@pytest.mark.parametrize(
    "change, message",
    [
        (
            {"terms": (replace(ECHO.terms[0], view="beside"), *ECHO.terms[1:])},
            "view 'beside'",
        ),
        ({"terms": (replace(ECHO.terms[0], loss="mse"), *ECHO.terms[1:])}, "loss 'mse'"),
        ({"terms": (replace(ECHO.terms[0], kind="other"), *ECHO.terms[1:])}, "kind 'other'"),
        ({"behaviour_term": "only_secret"}, "baseline term 'only_secret'"),
        ({"terms": ECHO.terms + ECHO.terms[:1]}, "two terms share a name"),
    ],
)
def test_a_bad_declaration_is_refused_where_it_is_made(change, message):
    with pytest.raises(SafeSeekError, match=f"scenario 'echo': .*{message}"):
        replace(ECHO, **change)


def test_names_are_unique_and_unknown_ones_listed(echo):
    with pytest.raises(SafeSeekError, match="already registered"):
        register(ECHO)
    with pytest.raises(SafeSeekError, match="choose from backdoor, alignment, custom, echo"):
        DiscoverConfig("poison")


def test_unknown_term_weights_are_refused_in_the_settings():
    with pytest.raises(
        SafeSeekError, match="unknown backdoor term 'without_x'; terms: without_triggered"
    ):
        DiscoverConfig("backdoor", weights={"without_x": 2.0})
