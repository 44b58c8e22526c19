"""The circuit anchor of Safety Circuit Tuning (safeseek/tuning/anchor.py): what it measures,
where its gradient goes, and that tuning with it still keeps frozen entries unchanged."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CASES, build
from helpers import module_at
from test_tuning import CIRCUIT, PadOnly, changes, examples

from safeseek import Circuit, SafeSeekError
from safeseek.data.encode import pad
from safeseek.training import autocast_for
from safeseek.tuning import TuneConfig, ownership, tune
from safeseek.tuning.anchor import CircuitAnchor


def head_dim(model) -> int:
    cfg = model.config
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def independent_activations(model, family: str, circuit: Circuit, batch) -> torch.Tensor:
    """The circuit's unit activations read off the projections' inputs by plain hooks."""
    case, hd, seen = CASES[family], head_dim(model), {}
    paths = [case.attn_out.format(i=i) for i in range(model.config.num_hidden_layers)]
    paths += [case.mlp_out.format(i=i) for i in range(model.config.num_hidden_layers)]
    handles = [
        module_at(model, p).register_forward_pre_hook(
            lambda _m, args, p=p: seen.setdefault(p, args[0].detach().clone())
        )
        for p in paths
    ]
    with torch.no_grad():
        model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    for h in handles:
        h.remove()
    pieces = []
    for layer in range(model.config.num_hidden_layers):
        for head in sorted(h for l_, h in circuit.heads if l_ == layer):
            pieces.append(seen[case.attn_out.format(i=layer)][..., head * hd : (head + 1) * hd])
    for layer in range(model.config.num_hidden_layers):
        cols = sorted(j for l_, j in circuit.neurons if l_ == layer)
        if cols:
            pieces.append(seen[case.mlp_out.format(i=layer)][..., cols])
    return torch.cat(pieces, dim=-1)


def test_the_anchor_reads_the_circuit_units(family, tiny):
    data = examples(6)
    anchor = CircuitAnchor(tiny, CIRCUIT, data, 0, weight=1.0)
    batch = pad(data, 0)
    with torch.no_grad():
        got = anchor.activations(data)
    assert torch.allclose(got, independent_activations(tiny, family, CIRCUIT, batch), atol=1e-6)


def test_the_anchor_is_zero_before_tuning_and_grows_with_change():
    model = build("llama")
    anchor = CircuitAnchor(model, CIRCUIT, examples(6), 0, weight=1.0, batch_size=6)
    with torch.no_grad():  # a fresh autocast region for each: autocast caches cast weights
        with autocast_for(model):
            assert anchor.loss().item() == 0.0
        model.model.layers[0].self_attn.q_proj.weight.add_(0.5)
        with autocast_for(model):
            assert anchor.loss().item() > 1e-3


def test_the_anchor_gradient_stays_upstream_of_the_circuit():
    """Only parameters that feed the circuit's units get a gradient: none in layers after the
    last circuit layer's units, none in the LM head, none in layer 1's MLP down projection
    (which the circuit's layer-1 neurons feed, not read)."""
    model = build("llama")
    circuit = Circuit(heads=[(0, 1)], neurons=[(1, 7)])
    anchor = CircuitAnchor(model, circuit, examples(6), 0, weight=1.0, batch_size=6)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01 * torch.randn_like(p))
    anchor.loss().backward()
    grads = {n: p.grad for n, p in model.named_parameters()}
    reached = {n for n, g in grads.items() if g is not None and g.abs().sum() > 0}
    assert "model.layers.0.self_attn.q_proj.weight" in reached
    assert "model.layers.1.mlp.up_proj.weight" in reached
    assert not {n for n in reached if n.startswith(("lm_head", "model.norm"))}
    assert "model.layers.1.mlp.down_proj.weight" not in reached
    assert "model.layers.0.self_attn.o_proj.weight" in reached  # layer 0 writes what layer 1 reads
    later = {n for n in reached if n.startswith(tuple(f"model.layers.{i}." for i in range(2, 9)))}
    assert not later


def test_tuning_with_the_anchor_keeps_frozen_entries_and_the_circuit_closer(family, tiny):
    masks = ownership(tiny, CIRCUIT).parameter_masks(tiny)
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    anchor_data = examples(8, seed=5)
    plain = TuneConfig(mode="exclude-circuit", steps=20, lr=1e-2, batch_size=4)
    kept = TuneConfig(mode="exclude-circuit", steps=20, lr=1e-2, batch_size=4, anchor_weight=1000.0)
    free, _ = tune(copy.deepcopy(tiny), PadOnly(), CIRCUIT, examples(), plain)
    held, summary = tune(
        copy.deepcopy(tiny), PadOnly(), CIRCUIT, examples(), kept, anchor=anchor_data
    )
    moved = changes(before, held)
    assert sum(int((moved[n] & m).sum()) for n, m in masks.items()) == 0
    assert summary["anchor_first"] == pytest.approx(0.0, abs=1e-3)

    batch = pad(anchor_data, 0)
    start = independent_activations(tiny, family, CIRCUIT, batch)

    def distance(model) -> float:
        return float((independent_activations(model, family, CIRCUIT, batch) - start).pow(2).sum())

    assert distance(held) < 0.5 * distance(free)


@pytest.mark.parametrize(
    ("settings", "anchor", "message"),
    [
        ({"mode": "exclude-circuit", "anchor_weight": -1.0}, False, ">= 0"),
        ({"mode": "circuit-only", "anchor_weight": 1.0}, True, "exclude-circuit"),
        ({"mode": "exclude-circuit", "anchor_weight": 1.0}, False, "both anchor prompts"),
        ({"mode": "exclude-circuit"}, True, "both anchor prompts"),
    ],
)
def test_bad_anchor_settings_are_refused(settings, anchor, message):
    with pytest.raises(SafeSeekError, match=message):
        config = TuneConfig(**settings)
        tune(build("llama"), PadOnly(), CIRCUIT, examples(), config, anchor=examples(2) * anchor)


def test_the_anchor_needs_head_or_neuron_units():
    with pytest.raises(SafeSeekError, match="layer or weight units"):
        CircuitAnchor(build("llama"), Circuit(layers=[(0, "attn")]), examples(2), 0, 1.0)


def test_random_like_matches_each_layer_and_kind():
    model = build("llama")
    circuit = Circuit(heads=[(0, 1), (0, 2), (1, 3)], neurons=[(1, 5), (1, 6), (1, 9)])
    drawn = [circuit.random_like(model, seed=s) for s in range(4)]
    for control in drawn:
        for gran in ("head", "neuron", "layer"):
            assert torch.equal(
                control.membership(model, gran).sum(1), circuit.membership(model, gran).sum(1)
            )
    assert len(set(drawn)) > 1
    assert circuit.random_like(model, seed=2) == drawn[2]
