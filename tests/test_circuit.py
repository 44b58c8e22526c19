"""Circuit set operations, sparsity, JSON round-trips and refusal on a mismatched model."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import build
from safetensors.torch import load_file, save_file

from safeseek import Circuit, MaskedModel, SafeSeekError
from safeseek.models import architecture


def test_units_are_sorted_and_unique():
    c = Circuit(heads=[(1, 2), (0, 3), (1, 2)], neurons=[(1, 0), (0, 9)], layers=[(1, "mlp")])
    assert c.heads == [(0, 3), (1, 2)]
    assert c.neurons == [(0, 9), (1, 0)]
    assert c.counts() == {"head": 2, "neuron": 2, "layer": 1, "weight": 0}
    assert len(c) == 5
    with pytest.raises(SafeSeekError, match="attn"):
        Circuit(layers=[(0, "ffn")])


def test_set_operations():
    a = Circuit(heads=[(0, 0), (0, 1)], neurons=[(1, 5)])
    b = Circuit(heads=[(0, 1), (1, 1)], neurons=[(1, 5), (1, 6)])
    assert (a | b) == Circuit(heads=[(0, 0), (0, 1), (1, 1)], neurons=[(1, 5), (1, 6)])
    assert (a & b) == Circuit(heads=[(0, 1)], neurons=[(1, 5)])
    assert (a - b) == Circuit(heads=[(0, 0)])
    assert a.union(b) == a | b and a.intersection(b) == a & b and a.difference(b) == a - b
    assert (a - a).is_empty()


def test_sparsity_against_a_model():
    model = build("llama")  # 2 layers x 4 heads, 2 x 48 neurons
    c = Circuit(heads=[(0, 0), (1, 3)], neurons=[(0, 1), (0, 2), (1, 3)])
    s = c.sparsity(model)
    assert s["head"] == pytest.approx(2 / 8)
    assert s["neuron"] == pytest.approx(3 / 96)
    assert s["overall"] == pytest.approx(5 / 104)


def test_membership_round_trip():
    model = build("gemma")
    c = Circuit(heads=[(1, 3)], neurons=[(0, 47)], layers=[(1, "attn")])
    masks = {g: c.membership(model, g) for g in ("head", "neuron", "layer")}
    assert masks["head"].shape == (2, 4) and masks["head"].sum() == 1
    assert Circuit.from_membership(masks) == c


def test_save_load_round_trip(tmp_path):
    model = build("qwen2")
    mm = MaskedModel(model)
    c = Circuit(heads=[(0, 2)], neurons=[(1, 4)], metadata={**mm.metadata(), "seed": 7})
    path = tmp_path / "circuit.json"
    c.save(path)
    loaded = Circuit.load(path, model=model)
    assert loaded == c
    assert loaded.metadata["seed"] == 7
    assert loaded.metadata["model"]["architecture"]["n_kv_heads"] == 2
    assert loaded.metadata["ablation"] == "zero"
    assert list(tmp_path.iterdir()) == [path]  # nothing half-written left beside it


def test_weight_units_are_saved_beside_the_json_as_index_lists(tmp_path):
    model = build("llama")
    mm = MaskedModel(model, granularities=("neuron", "weight"))
    per_layer = mm.arch.units_per_layer("weight")
    weights = [(0, 3), (0, per_layer - 1), (1, 17), (1, 64 * 64 + 5)]
    c = Circuit(neurons=[(1, 4)], weights=weights, metadata=mm.metadata())
    path = tmp_path / "circuit.json"
    c.save(path)
    data = json.loads(path.read_text())
    assert data["weights"]["file"] == "circuit.weights.safetensors"
    assert data["counts"]["weight"] == 4
    loaded = Circuit.load(path, model=model)
    assert loaded == c and loaded.weights == sorted(weights)
    # Per layer and matrix, entries of the matrix seen [out, in]: 64 x 64 attention output
    # projection first, then the 64 x 48 down projection.
    side = load_file(str(tmp_path / "circuit.weights.safetensors"))
    assert {k: v.tolist() for k, v in side.items()} == {
        "0.attn_out": [3],
        "0.mlp_out": [per_layer - 1 - 64 * 64],
        "1.attn_out": [17],
        "1.mlp_out": [5],
    }
    assert c.weight_entries(model)[1, 1].tolist() == [5]
    save_file({"0.attn_out": torch.tensor([4])}, str(tmp_path / "circuit.weights.safetensors"))
    with pytest.raises(SafeSeekError, match="does not match"):
        Circuit.load(path)
    (tmp_path / "circuit.weights.safetensors").unlink()
    with pytest.raises(SafeSeekError, match="missing"):
        Circuit.load(path)
    with pytest.raises(SafeSeekError, match="outside"):
        Circuit(weights=[(0, per_layer)]).check(model)


def test_mismatched_circuit_is_refused(tmp_path):
    small = build("llama")
    path = tmp_path / "c.json"
    Circuit(heads=[(0, 1)], metadata=MaskedModel(small).metadata()).save(path)
    other = build("gemma")  # other family and head_dim
    with pytest.raises(SafeSeekError, match=r"family 'llama' vs 'gemma'.*head_dim 16 vs 32"):
        Circuit.load(path, model=other)
    with pytest.raises(SafeSeekError, match="outside"):
        Circuit(neurons=[(0, 10_000)]).check(small)


def test_bad_circuit_files(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(SafeSeekError, match=r"bad.json:1: not valid JSON"):
        Circuit.load(bad)
    bad.write_text(json.dumps({"heads": []}))
    with pytest.raises(SafeSeekError, match="not a SafeSeek circuit"):
        Circuit.load(bad)
    with pytest.raises(SafeSeekError, match="no such"):
        Circuit.load(tmp_path / "missing.json")


def test_masks_round_trip_through_safetensors(tmp_path):
    model = build("llama")
    batch = {"input_ids": torch.randint(3, 90, (2, 6))}
    mm = MaskedModel(model, parametrization="hard_concrete", ablation="mean", reference=[batch])
    with torch.no_grad():
        for mask in mm.masks.values():
            mask.logits.normal_()
    path = tmp_path / "masks.safetensors"
    mm.save_masks(path)
    assert path.read_bytes()[:8]  # safetensors header, not a pickle
    fresh = MaskedModel(model, parametrization="hard_concrete", ablation="mean")
    fresh.load_masks(path)
    for g in mm.masks:
        assert torch.equal(fresh.masks[g].logits, mm.masks[g].logits)
        assert torch.equal(fresh.means[g], mm.means[g])
    assert fresh.circuit() == mm.circuit()
    with pytest.raises(SafeSeekError, match="do not match"):
        MaskedModel(build("gpt2"), parametrization="hard_concrete").load_masks(path)
    with pytest.raises(SafeSeekError, match="hard_concrete"):
        MaskedModel(model, parametrization="ste").load_masks(path)


def test_architecture_reads_config_shapes():
    arch = architecture(build("gpt2"))
    assert (arch.n_layers, arch.n_heads, arch.n_kv_heads, arch.head_dim) == (2, 4, 4, 16)
    assert arch.intermediate_size == 48
    arch = architecture(build("gemma"))
    assert (arch.n_heads, arch.n_kv_heads, arch.head_dim) == (4, 2, 32)
    # Weight units: entries of the 64 x (4 * 32) attention output and 64 x 48 down projections.
    assert arch.num_units == {"head": 8, "neuron": 96, "layer": 4, "weight": 2 * 64 * (128 + 48)}


def test_random_circuit_has_the_requested_counts_and_depends_on_the_seed():
    model = build("llama")
    a = Circuit.random(model, {"head": 3, "neuron": 10, "layer": 1}, seed=1)
    assert a.counts() == {"head": 3, "neuron": 10, "layer": 1, "weight": 0}
    a.check(model)
    assert Circuit.random(model, {"weight": 50}).counts()["weight"] == 50
    assert a == Circuit.random(model, {"head": 3, "neuron": 10, "layer": 1}, seed=1)
    assert a != Circuit.random(model, {"head": 3, "neuron": 10, "layer": 1}, seed=2)
    with pytest.raises(SafeSeekError, match="cannot draw 9"):
        Circuit.random(model, {"head": 9})
