"""Baselines: each score checked against an independent computation on tiny models (weight
surgery, hand-written gradients and activation norms), the shared top-k with set difference,
and every method through `safeseek discover --method`."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch
import torch.nn.functional as F
from conftest import CASES, build, tiny_tokenizer
from helpers import module_at, surgery
from tiny_backdoor import records as backdoor_records
from transformers.pytorch_utils import Conv1D

from safeseek import Circuit
from safeseek.baselines import (
    METHODS,
    WEIGHT_METHODS,
    UnitScores,
    circuit_of_counts,
    circuit_of_size,
    score_units,
)
from safeseek.baselines.common import examples, mean_loss
from safeseek.baselines.patching import (
    activation_patching,
    attribution_patching,
    integrated_gradients,
)
from safeseek.baselines.pruning import snip, wanda
from safeseek.data import pad
from safeseek.data.records import validate
from safeseek.errors import SafeSeekError
from safeseek.forward import labelled_logits
from safeseek.models.adapters import architecture

FAMILIES = ["llama", "gpt2", "gemma"]  # GQA, Conv1D projections, head_dim != hidden / heads


def _examples(n: int = 6):
    recs = [validate(r, "backdoor", f"r{i}") for i, r in enumerate(backdoor_records(n, 3))]
    return examples(tiny_tokenizer(), recs, "backdoor")


def _projection_inputs(model, name, rows, pad_id):
    """Inputs of every layer's attention output and MLP down projection, with autograd."""
    case = CASES[name]
    n_layers = architecture(model).n_layers
    seen: dict[tuple[str, int], list[torch.Tensor]] = {}
    handles = []
    for i in range(n_layers):
        for kind, path in (("head", case.attn_out), ("neuron", case.mlp_out)):

            def grab(module, args, key=(kind, i)):
                if args[0].requires_grad:
                    args[0].retain_grad()
                seen.setdefault(key, []).append(args[0])

            handles.append(module_at(model, path.format(i=i)).register_forward_pre_hook(grab))
    batch = pad(rows, pad_id)
    try:
        logits, targets = labelled_logits(model, **batch)
        loss = F.cross_entropy(logits.float(), targets)
    finally:
        for h in handles:
            h.remove()
    return seen, loss, batch["attention_mask"].bool()


@pytest.mark.parametrize("name", FAMILIES)
def test_activation_patching_is_the_loss_rise_of_weight_surgery(name):
    model, ex = build(name), _examples()
    pad_id = tiny_tokenizer().pad_token_id
    scores = activation_patching(model, pad_id, ex, ("head", "neuron"), neuron_group=16)
    base = mean_loss(model, ex.behaviour, pad_id)
    for g, unit in (("head", (1, 2)), ("neuron", (0, 16))):
        layer, first = unit
        members = [(layer, first)] if g == "head" else [(layer, first + j) for j in range(16)]
        circuit = Circuit(heads=members) if g == "head" else Circuit(neurons=members)
        want = mean_loss(surgery(model, name, circuit), ex.behaviour, pad_id) - base
        torch.testing.assert_close(scores[g][layer, first], torch.tensor(want), atol=1e-5, rtol=0)
    assert (scores["neuron"][0, 16:32] == scores["neuron"][0, 16]).all()  # one group


@pytest.mark.parametrize("name", FAMILIES)
def test_attribution_patching_is_gradient_times_difference_to_the_clean_mean(name):
    model, ex = build(name), _examples()
    pad_id = tiny_tokenizer().pad_token_id
    scores = attribution_patching(model, pad_id, ex, ("head", "neuron"))
    means = _clean_means(model, name, ex, pad_id)
    seen, loss, _ = _projection_inputs(model, name, ex.behaviour, pad_id)
    loss.backward()
    arch = architecture(model)
    for (g, layer), (x,) in seen.items():
        # rise when x -> mean, to first order: (mean - x) . dL/dx, per channel
        per_channel = ((means[(g, layer)] - x) * x.grad).sum((0, 1))
        if g == "head":
            per_channel = per_channel.view(arch.n_heads, arch.head_dim).sum(-1)
        torch.testing.assert_close(scores[g][layer], per_channel, atol=1e-5, rtol=1e-4)


def _clean_means(model, name, ex, pad_id):
    """Every projection input's mean over the utility rows' real tokens but each row's first
    (the attention sink, left out as MaskedModel.fit_means does), by hand."""
    with torch.no_grad():
        clean, _, mask = _projection_inputs(model, name, ex.utility, pad_id)
    mask = mask.clone()
    mask[torch.arange(len(mask)), mask.int().argmax(1)] = False
    return {k: v[0][mask].double().mean(0).float() for k, v in clean.items()}


@pytest.mark.parametrize("name", FAMILIES)
def test_integrated_gradients_of_a_layer_add_up_to_patching_it_whole(name):
    """Completeness: a layer's unit scores sum to the loss rise of patching all its units to
    their clean means at once (hand hooks); the midpoint rule converges to it quickly."""
    model, ex = build(name), _examples()
    pad_id = tiny_tokenizer().pad_token_id
    scores = integrated_gradients(model, pad_id, ex, ("head", "neuron"), steps=24)
    means = _clean_means(model, name, ex, pad_id)
    base = mean_loss(model, ex.behaviour, pad_id)
    case = CASES[name]
    for layer in range(architecture(model).n_layers):
        handles = [
            module_at(model, path.format(i=layer)).register_forward_pre_hook(
                lambda m, a, mean=means[(g, layer)]: (mean.expand_as(a[0]),)
            )
            for g, path in (("head", case.attn_out), ("neuron", case.mlp_out))
        ]
        try:
            rise = mean_loss(model, ex.behaviour, pad_id) - base
        finally:
            for h in handles:
                h.remove()
        total = scores["head"][layer].sum() + scores["neuron"][layer].sum()
        assert abs(float(total) - rise) <= 2e-3 * max(abs(rise), 1e-2), (layer, float(total), rise)
    one = integrated_gradients(model, pad_id, ex, ("head",), steps=1)  # alone: heads only
    assert one["head"].shape == scores["head"].shape and not torch.equal(
        one["head"], scores["head"]
    )


def test_quotas_rank_within_each_granularity():
    arch = architecture(build("llama"))  # 2 layers x 4 heads, 2 x 48 neurons
    behaviour = {"head": torch.zeros(2, 4), "neuron": torch.zeros(2, 48)}
    behaviour["head"][1, 3], behaviour["head"][0, 2] = 1.0, 0.5
    behaviour["neuron"][0, 7], behaviour["neuron"][1, 9] = 9.0, 8.0
    # jointly the two neurons win; with one head and one neuron the best of each kind
    joint = circuit_of_size(UnitScores("x", behaviour), arch, 2 / 104)
    assert joint.heads == [] and len(joint.neurons) == 2
    quota = circuit_of_counts(UnitScores("x", behaviour), arch, {"head": 1, "neuron": 1})
    assert quota.heads == [(1, 3)] and quota.neurons == [(0, 7)]
    assert quota.metadata["counts"] == {"head": 1, "neuron": 1}
    utility = {"head": torch.zeros(2, 4), "neuron": torch.zeros(2, 48)}
    utility["head"][1, 3] = 5.0  # the top head by utility is left out, within heads only
    diff = circuit_of_counts(UnitScores("x", behaviour, utility), arch, {"head": 1, "neuron": 1})
    assert diff.heads == [(0, 2)] and diff.neurons == [(0, 7)]
    assert len(circuit_of_counts(UnitScores("x", behaviour), arch, {"neuron": 3})) == 3
    for counts, message in (
        ({"head": 9}, "quota must be in"),
        ({"layer": 1}, "no layer scores"),
        ({"head": 0}, "at least one unit"),
    ):
        with pytest.raises(SafeSeekError, match=message):
            circuit_of_counts(UnitScores("x", behaviour), arch, counts)


@pytest.mark.parametrize("name", FAMILIES)
def test_snip_and_wanda_sum_their_weight_importances_over_each_unit(name):
    model, ex = build(name), _examples()
    pad_id = tiny_tokenizer().pad_token_id
    got_snip = snip(model, ex.behaviour, pad_id, ("head", "neuron", "weight"))
    got_wanda = wanda(model, ex.behaviour, pad_id, ("head", "neuron", "weight"))
    assert not any(p.grad is not None for p in model.parameters())  # nothing left behind
    seen, loss, mask = _projection_inputs(model, name, ex.behaviour, pad_id)
    arch = architecture(model)
    layer = 1
    entries = {"snip": [], "wanda": []}  # per weight, [out, in] row-major: attention, then MLP
    for g, path in (("head", CASES[name].attn_out), ("neuron", CASES[name].mlp_out)):
        module = module_at(model, path.format(i=layer))
        weight = module.weight if isinstance(module, Conv1D) else module.weight.T  # [in, out]
        (grad,) = torch.autograd.grad(loss, module.weight, retain_graph=True)
        grad = grad if isinstance(module, Conv1D) else grad.T
        snip_channels = (weight * grad).abs().sum(1)
        x = seen[(g, layer)][0][mask]
        wanda_channels = weight.abs().sum(1) * x.norm(dim=0)
        entries["snip"].append((weight * grad).abs().T.flatten())
        entries["wanda"].append((weight.abs() * x.norm(dim=0)[:, None]).T.flatten())
        if g == "head":
            snip_channels = snip_channels.view(arch.n_heads, -1).sum(-1)
            wanda_channels = wanda_channels.view(arch.n_heads, -1).sum(-1)
        torch.testing.assert_close(got_snip[g][layer], snip_channels.detach(), rtol=1e-4, atol=1e-7)
        torch.testing.assert_close(
            got_wanda[g][layer], wanda_channels.detach(), rtol=1e-4, atol=1e-6
        )
    for method, got in (("snip", got_snip), ("wanda", got_wanda)):
        want = torch.cat(entries[method]).detach()
        torch.testing.assert_close(got["weight"][layer], want, rtol=1e-4, atol=1e-7)


def test_top_k_is_joint_and_set_difference_skips_utility_units():
    arch = architecture(build("llama"))  # 2 layers x 4 heads, 2 x 48 neurons: 104 units
    behaviour = {"head": torch.zeros(2, 4), "neuron": torch.zeros(2, 48)}
    behaviour["head"][1, 3] = 5.0
    behaviour["neuron"][0, 7] = 4.0
    behaviour["neuron"][1, 9] = 3.0
    behaviour["neuron"][0, 0] = 2.0
    plain = circuit_of_size(UnitScores("x", behaviour), arch, 3 / 104)
    assert plain.heads == [(1, 3)] and sorted(plain.neurons) == [(0, 7), (1, 9)]
    utility = {"head": torch.zeros(2, 4), "neuron": torch.zeros(2, 48)}
    utility["neuron"][0, 7] = 9.0  # the utility's top 3 holds (0, 7)
    utility["head"][0, 0] = utility["head"][0, 1] = 8.0
    diff = circuit_of_size(UnitScores("x", behaviour, utility), arch, 3 / 104)
    assert diff.heads == [(1, 3)] and sorted(diff.neurons) == [(0, 0), (1, 9)]
    assert diff.metadata["method"] == "x"
    assert len(circuit_of_size(UnitScores("x", behaviour), arch, 0.1)) == 10


def test_utility_examples_take_the_first_of_each_utility_term():
    """A backdoor's utility examples are its clean pairs and its preservation records, the
    first `limit` of each, encoded as the objective's own terms encode them."""
    from safeseek.data import PairEncoder

    tok = tiny_tokenizer()
    pairs = backdoor_records(5, 3)
    plain = [{"prompt": f"what is {x} ?", "response": "q"} for x in "abc"]
    recs = [validate(r, "backdoor", f"r{i}") for i, r in enumerate([*plain, *pairs])]
    encoder = PairEncoder(tok, 512, 32)
    for limit, n in ((None, 5), (2, 2)):
        ex = examples(tok, recs, "backdoor", limit=limit)
        want = [encoder.pair(r["clean_prompt"], r["clean_response"]) for r in pairs[:n]]
        want += [encoder.pair(r["prompt"], r["response"]) for r in plain[: limit or 3]]
        assert [e.input_ids for e in ex.utility] == [e.input_ids for e in want]
        assert [e.labels for e in ex.utility] == [e.labels for e in want]
        assert len(ex.behaviour) == n


def test_random_scores_depend_on_the_seed_only():
    model, tok = build("llama"), tiny_tokenizer()
    recs = [validate(r, "backdoor", f"r{i}") for i, r in enumerate(backdoor_records(4, 3))]
    arch = architecture(model)
    a, b, c = (
        circuit_of_size(score_units("random", model, tok, recs, "backdoor", seed=s), arch, 0.1)
        for s in (0, 0, 1)
    )
    assert a.heads == b.heads and a.neurons == b.neurons
    assert (a.heads, a.neurons) != (c.heads, c.neurons)


@pytest.fixture(scope="module")
def organism(tmp_path_factory):
    from tiny_backdoor import save

    root = tmp_path_factory.mktemp("organism")
    data = {"data.jsonl": backdoor_records(16, 5)}
    model, _ = save(root, data, seed=0, clean_steps=50, poison_steps=20)
    return root, architecture(model).num_units


@pytest.mark.parametrize("method", METHODS)
def test_every_method_through_the_command_line(method, organism, tmp_path):
    """Heads and neurons; methods that score single weights rank neurons and weights jointly."""
    root, num_units = organism
    grans = ("neuron", "weight") if method in WEIGHT_METHODS else ("head", "neuron")
    units = sum(num_units[g] for g in grans)
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "COLUMNS": "200"}
    args = ["discover", "--model", str(root / "model"), "--data", str(root / "data.jsonl")]
    # random also cuts a frontier: one scoring, a circuit per size (the smallest in OUT/)
    size_args = ["--sizes", "10%,5%"] if method == "random" else ["--sparsity-target", "0.05"]
    args += ["--method", method, *size_args, "--out", str(tmp_path / "run")]
    args += ["--dtype", "float32", "--granularity", ",".join(grans)]
    proc = subprocess.run(
        [sys.executable, "-m", "safeseek", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    circuit = Circuit.load(tmp_path / "run" / "circuit.json")
    assert len(circuit) == round(0.05 * units) and circuit.metadata["method"] == method
    assert bool(circuit.weights) == ("weight" in grans)
    if method == "random":
        frontier = json.loads((tmp_path / "run" / "frontier.json").read_text())["sizes"]
        assert [f["size"] for f in frontier] == [0.1, 0.05]
        larger = Circuit.load(tmp_path / "run" / "size-0.1" / "circuit.json")
        assert len(larger) == round(0.1 * units)
        assert Circuit.load(tmp_path / "run" / "size-0.05" / "circuit.json") == circuit
    assert (tmp_path / "run" / "scores.safetensors").is_file()
