"""Several discovery seeds: the summary of their circuits, against a hand computation
(`safeseek discover --seeds` end to end is in test_discover.py)."""

from __future__ import annotations

import pytest

from safeseek import Circuit, SafeSeekError
from safeseek.seeds import compare, parse_seeds, span


def _circuit(heads, neurons, removed, kept):
    check = {"removed": removed, "utility_kept": kept, "passed": removed >= 0.9}
    return Circuit(heads=heads, neurons=neurons, metadata={"check": check})


def test_summary_of_seeds_against_hand_computation():
    circuits = {
        0: _circuit([(0, 1), (1, 2)], [(0, 5)], 1.0, 0.96),
        1: _circuit([(0, 1)], [(0, 5), (1, 7)], 0.8, 1.0),
        2: _circuit([(0, 1), (1, 2)], [(0, 5), (1, 7)], 0.95, 0.98),
    }
    got = compare(circuits, {0: 0.01, 1: 0.01, 2: 0.02})
    # |A & B| / |A | B| by hand: seeds 0 and 1 share 2 of 4 units; 0 and 2, 1 and 2: 3 of 4
    assert got["jaccard"] == [[1.0, 0.5, 0.75], [0.5, 1.0, 0.75], [0.75, 0.75, 1.0]]
    assert got["jaccard_pairs"]["min"] == 0.5 and got["jaccard_pairs"]["max"] == 0.75
    assert got["in_every_seed"] == {"heads": [[0, 1]], "neurons": [[0, 5]], "layers": []}
    assert got["units"] == {"mean": 3.3333, "min": 3.0, "max": 4.0, "n": 3}
    assert got["removed"]["min"] == 0.8 and got["removed"]["mean"] == pytest.approx(0.9167, 1e-4)
    assert got["passed"] == 2 and got["per_seed"]["1"]["passed"] is False


def test_seed_lists_are_checked():
    assert parse_seeds("0, 1,2") == [0, 1, 2]
    for bad in ("0", "0,0", "a,b"):
        with pytest.raises(SafeSeekError):
            parse_seeds(bad)


def test_span_gives_mean_and_range_and_a_lone_value_as_itself():
    assert span([0.87, 0.964, 0.963]) == "93.2% (87.0%-96.4%)"
    assert span([0.00211, 0.00330], "{:.3%}") == "0.271% (0.211%-0.330%)"
    assert span([0.5]) == "50.0%"
    assert span([]) == "-"
