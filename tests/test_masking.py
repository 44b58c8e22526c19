"""MaskedModel against independent weight surgery, on every supported family."""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CASES, build
from helpers import logits, module_at, surgery
from transformers.pytorch_utils import Conv1D

from safeseek import Circuit, MaskedModel, SafeSeekError


def some_circuit(model) -> Circuit:
    cfg = model.config
    inter = getattr(cfg, "intermediate_size", None) or cfg.n_inner
    return Circuit(
        heads=[(0, 1), (1, 0), (1, cfg.num_attention_heads - 1)],
        neurons=[(0, 0), (0, 5), (1, 7), (1, inter - 1)],
    )


def test_without_equals_surgery(family, tiny, batch):
    c = some_circuit(tiny)
    mm = MaskedModel(tiny)
    with mm.without(c):
        got = logits(tiny, batch)
    want = logits(surgery(tiny, family, c), batch)
    assert not torch.allclose(want, logits(tiny, batch), atol=1e-3)  # the circuit matters
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_only_equals_surgery(family, tiny, batch):
    c = some_circuit(tiny)
    mm = MaskedModel(tiny)
    with mm.only(c):
        got = logits(tiny, batch)
    want = logits(surgery(tiny, family, c, only=True), batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_empty_circuit_changes_nothing(family, tiny, batch):
    before = logits(tiny, batch)
    for ablation in ("zero", "mean"):
        mm = MaskedModel(tiny, ablation=ablation, reference=[batch])
        with mm.without(Circuit()):
            assert torch.equal(logits(tiny, batch), before)


def test_leaving_a_view_restores_the_model(family, tiny, batch):
    state = {k: v.clone() for k, v in tiny.state_dict().items()}
    flags = {n: p.requires_grad for n, p in tiny.named_parameters()}
    before = logits(tiny, batch)
    mm = MaskedModel(tiny)
    with pytest.raises(RuntimeError, match="boom"), mm.learned():
        tiny(**batch).logits.sum().backward()
        raise RuntimeError("boom")
    with mm.only(some_circuit(tiny)):
        logits(tiny, batch)
    assert torch.equal(logits(tiny, batch), before)
    assert all(torch.equal(v, state[k]) for k, v in tiny.state_dict().items())
    assert {n: p.requires_grad for n, p in tiny.named_parameters()} == flags
    hooks = sum(len(m._forward_hooks) + len(m._forward_pre_hooks) for m in tiny.modules())
    assert hooks == 0


def test_detach_removes_hooks(tiny, batch):
    before = logits(tiny, batch)
    mm = MaskedModel(tiny)
    view = mm.without(some_circuit(tiny))
    view.__enter__()
    assert not torch.equal(logits(tiny, batch), before)
    mm.detach()
    assert torch.equal(logits(tiny, batch), before)


@pytest.mark.parametrize("parametrization", ["ste", "hard_concrete"])
def test_learned_gradients_reach_masks_only(family, tiny, batch, parametrization):
    mm = MaskedModel(tiny, parametrization=parametrization, init_logit=0.5)
    assert {n for n, _ in mm.named_parameters()} == {
        "masks.head.logits",
        "masks.neuron.logits",
    }
    assert all(p.dtype == torch.float32 for p in mm.parameters())
    for view in ("without", "only"):
        mm.zero_grad(set_to_none=True)
        with mm.learned(view):
            loss = tiny(**batch).logits.float().pow(2).mean()
            loss = loss + 1e-3 * sum(mm.expected_size().values())
            loss.backward()
        for name, p in mm.named_parameters():
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
            assert (p.grad != 0).all(), f"{name}: some mask logits got no gradient"
        assert all(p.grad is None for p in tiny.parameters())


def test_ste_forward_gradient_without_penalty(tiny, batch):
    mm = MaskedModel(tiny, parametrization="ste", init_logit=-1.0)
    with mm.learned():
        tiny(**batch).logits.pow(2).mean().backward()
    for name, p in mm.named_parameters():
        assert (p.grad != 0).all(), f"{name}: the loss itself did not reach every logit"


def test_learned_matches_fixed_views(family, tiny, batch):
    c = some_circuit(tiny)
    mm = MaskedModel(tiny)
    mm.set_circuit(c)
    assert mm.circuit() == c
    with mm.without(c):
        want_without = logits(tiny, batch)
    with mm.only(c):
        want_only = logits(tiny, batch)
    with mm.learned():
        torch.testing.assert_close(logits(tiny, batch), want_without, atol=1e-6, rtol=0)
    with mm.learned("only"):
        torch.testing.assert_close(logits(tiny, batch), want_only, atol=1e-6, rtol=0)


def test_hard_concrete_is_deterministic_in_eval(batch):
    model = build("llama")
    mm = MaskedModel(model, parametrization="hard_concrete", init_logit=0.0)
    with torch.no_grad():
        for mask in mm.masks.values():
            mask.logits.normal_(0, 2)
    with mm.learned():
        train_a, train_b = logits(model, batch), logits(model, batch)
    assert not torch.equal(train_a, train_b)  # stochastic gates while training
    mm.eval()
    with mm.learned():
        eval_a, eval_b = logits(model, batch), logits(model, batch)
    assert torch.equal(eval_a, eval_b)
    with mm.without(mm.circuit()):
        torch.testing.assert_close(logits(model, batch), eval_a, atol=1e-6, rtol=0)


def test_mean_ablation_equals_bias_folding(family, tiny, batch):
    reference = [batch]
    mm = MaskedModel(tiny, ablation="mean", reference=reference)
    c = some_circuit(tiny)
    means = mm.means
    with mm.without(c):
        got = logits(tiny, batch)
    want = logits(surgery(tiny, family, c, means=means), batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    with mm.only(c):
        got = logits(tiny, batch)
    want = logits(surgery(tiny, family, c, only=True, means=means), batch)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_mean_ablation_replaces_unit_by_stored_mean(batch):
    model = build("llama")
    case = CASES["llama"]
    mm = MaskedModel(model, ablation="mean", reference=[batch])
    head_dim = model.config.head_dim
    seen = {}
    o_proj = module_at(model, case.attn_out.format(i=1))
    down = module_at(model, case.mlp_out.format(i=0))
    with mm.without(Circuit(heads=[(1, 2)], neurons=[(0, 3)])):
        # Registered after the view's hooks, so they see what the projections receive.
        handles = [
            o_proj.register_forward_pre_hook(lambda m, a: seen.__setitem__("head", a[0].clone())),
            down.register_forward_pre_hook(lambda m, a: seen.__setitem__("neuron", a[0].clone())),
        ]
        model(**batch)
    for h in handles:
        h.remove()
    head = seen["head"][..., 2 * head_dim : 3 * head_dim]
    want = mm.means["head"][1, 2 * head_dim : 3 * head_dim].expand_as(head)
    torch.testing.assert_close(head, want)
    torch.testing.assert_close(seen["neuron"][..., 3], mm.means["neuron"][0, 3].expand(3, 10))
    # The mean is over real tokens but each row's first (the attention sink): by hand, for
    # the left-padded row 0 its token 3, for the others token 0.
    ids, mask = batch["input_ids"], batch["attention_mask"].bool().clone()
    mask[0, 3] = mask[1, 0] = mask[2, 0] = False
    captured = {}
    handle = down.register_forward_pre_hook(lambda m, a: captured.__setitem__("x", a[0]))
    with torch.no_grad():
        model(input_ids=ids, attention_mask=batch["attention_mask"])
    handle.remove()
    torch.testing.assert_close(mm.means["neuron"][0], captured["x"][mask].mean(0))


def test_scaled_keeps_each_units_share_as_a_hand_hook_does(family, tiny, batch):
    """x -> mean + keep * (x - mean) per unit, by hand on the projection inputs; keep 0 / 1 is
    `without`; gradients reach the keep values only."""
    case, cfg = CASES[family], tiny.config
    mm = MaskedModel(tiny, ablation="mean", reference=[batch])
    arch, means = mm.arch, mm.means
    g = torch.Generator().manual_seed(3)
    keep = {
        u: torch.rand(arch.n_layers, arch.units_per_layer(u), generator=g) for u in mm.granularities
    }
    keep["head"].requires_grad_(True)
    with mm.scaled(keep):
        got = tiny(**batch).logits
    got.square().mean().backward()
    assert keep["head"].grad is not None and keep["head"].grad.abs().sum() > 0
    assert all(p.grad is None and p.requires_grad for p in tiny.parameters())
    head_dim = arch.head_dim
    handles = []
    for i in range(cfg.num_hidden_layers):
        for u, path in (("head", case.attn_out), ("neuron", case.mlp_out)):
            k = keep[u][i].detach()
            k = k.repeat_interleave(head_dim) if u == "head" else k

            def hook(module, args, k=k, mean=means[u][i]):
                return (mean + k * (args[0] - mean),)

            handles.append(module_at(tiny, path.format(i=i)).register_forward_pre_hook(hook))
    try:
        want = logits(tiny, batch)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(got.detach(), want, atol=1e-5, rtol=0)
    c = some_circuit(tiny)
    binary = {u: 1.0 - c.membership(arch, u).float() for u in mm.granularities}
    with mm.scaled(binary):
        got = logits(tiny, batch)
    with mm.without(c):
        torch.testing.assert_close(got, logits(tiny, batch), atol=1e-6, rtol=0)
    with pytest.raises(SafeSeekError, match="shaped"), mm.scaled({"head": torch.ones(1, 1)}):
        pass
    with pytest.raises(SafeSeekError, match="not layer"), mm.scaled({"layer": torch.ones(1)}):
        pass


def test_mean_ablation_needs_reference(tiny):
    mm = MaskedModel(tiny, ablation="mean")
    with pytest.raises(SafeSeekError, match="reference"), mm.without(Circuit(heads=[(0, 0)])):
        pass


def test_layer_granularity_removes_whole_blocks(family, tiny, batch):
    case = CASES[family]
    mm = MaskedModel(tiny, granularities=("layer",))
    c = Circuit(layers=[(0, "attn"), (1, "mlp")])
    with mm.without(c):
        got = logits(tiny, batch)
    edited = surgery(tiny, family, Circuit())
    for path in (case.attn_out.format(i=0), case.mlp_out.format(i=1)):
        module = module_at(edited, path)
        module.weight.data.zero_()
        if module.bias is not None:
            module.bias.data.zero_()
    torch.testing.assert_close(got, logits(edited, batch), atol=1e-5, rtol=0)


def test_views_do_not_nest_and_check_granularity(tiny):
    mm = MaskedModel(tiny, granularities=("head",))
    with mm.without(Circuit(heads=[(0, 0)])), pytest.raises(SafeSeekError, match="already"):
        mm.only(Circuit(heads=[(0, 0)])).__enter__()
    with pytest.raises(SafeSeekError, match="neuron"):
        mm.without(Circuit(neurons=[(0, 0)]))
    with pytest.raises(SafeSeekError, match="outside"):
        mm.without(Circuit(heads=[(5, 0)]))


def test_bad_settings_are_refused(tiny):
    with pytest.raises(SafeSeekError, match="granularity"):
        MaskedModel(tiny, granularities=("edge",))
    with pytest.raises(SafeSeekError, match="parametrization"):
        MaskedModel(tiny, parametrization="gumbel")
    with pytest.raises(SafeSeekError, match="ablation"):
        MaskedModel(tiny, ablation="resample")


def test_bf16_model_keeps_fp32_masks(batch):
    model = build("llama").to(torch.bfloat16)
    mm = MaskedModel(model, init_logit=0.5)
    with mm.learned():
        out = model(**batch).logits
        assert out.dtype == torch.bfloat16
        out.float().pow(2).mean().backward()
    assert all(p.dtype == torch.float32 and p.grad is not None for p in mm.parameters())


def _entry_index(model, family: str, layer_entries) -> list[tuple[int, int]]:
    """Weight units `(layer, index)` of entries given as `(layer, "attn" | "mlp", row, col)` of
    the output projections seen [out, in], laid out as models/geometry.py says: the attention
    output projection's entries row-major, then the MLP down projection's."""
    case = CASES[family]
    o_proj = module_at(model, case.attn_out.format(i=0))
    o_in = o_proj.weight.shape[0 if isinstance(o_proj, Conv1D) else 1]
    down = module_at(model, case.mlp_out.format(i=0))
    d_in = down.weight.shape[0 if isinstance(down, Conv1D) else 1]
    hidden = model.config.hidden_size
    return [
        (layer, r * o_in + c if part == "attn" else hidden * o_in + r * d_in + c)
        for layer, part, r, c in layer_entries
    ]


ENTRIES = [
    (0, "attn", 0, 1),
    (0, "attn", 5, 0),
    (0, "mlp", 3, 7),
    (1, "mlp", 0, 0),
    (1, "attn", 2, 9),
]


@pytest.mark.parametrize("view", ["without", "only"])
def test_weight_units_equal_editing_entries_by_hand(family, tiny, batch, view):
    """Without the circuit: its entries set to 0 in a copy. The circuit alone (zero
    ablation): every other entry of the output projections set to 0."""
    case = CASES[family]
    c = Circuit(weights=_entry_index(tiny, family, ENTRIES))
    mm = MaskedModel(tiny, granularities=("weight",))
    with getattr(mm, view)(c):
        got = logits(tiny, batch)
    edited = copy.deepcopy(tiny)
    for layer in range(tiny.config.num_hidden_layers):
        for part, path in (("attn", case.attn_out), ("mlp", case.mlp_out)):
            module = module_at(edited, path.format(i=layer))
            w = module.weight.data.T if isinstance(module, Conv1D) else module.weight.data
            listed = torch.zeros_like(w, dtype=torch.bool)
            for la, pa, r, col in ENTRIES:
                listed[r, col] |= (la, pa) == (layer, part)
            w[listed if view == "without" else ~listed] = 0
    want = logits(edited, batch)
    assert not torch.allclose(want, logits(tiny, batch), atol=1e-6)  # the entries matter
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("ablation", ["zero", "mean"])
def test_weight_units_of_whole_columns_equal_heads_and_neurons(family, tiny, batch, ablation):
    """Every entry of head h's input columns of the attention output projection and of neuron
    j's column of the down projection, as weight units, is head h and neuron j: through the
    activation hooks, an independent path (mean ablation: each entry sees its input's mean)."""
    cfg = tiny.config
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    rows = range(cfg.hidden_size)
    entries = [(1, "attn", r, 2 * head_dim + d) for r in rows for d in range(head_dim)]
    entries += [(0, "mlp", r, 5) for r in rows]
    as_weights = Circuit(weights=_entry_index(tiny, family, entries))
    as_units = Circuit(heads=[(1, 2)], neurons=[(0, 5)])
    mm = MaskedModel(
        tiny, granularities=("head", "neuron", "weight"), ablation=ablation, reference=[batch]
    )
    with mm.without(as_units):
        want = logits(tiny, batch)
    with mm.without(as_weights):
        got = logits(tiny, batch)
    assert not torch.allclose(want, logits(tiny, batch), atol=1e-4)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_learned_weight_masks_get_gradients_and_match_the_fixed_view(tiny, batch):
    mm = MaskedModel(tiny, granularities=("head", "weight"))
    c = Circuit(heads=[(0, 1)], weights=[(0, 3), (1, 100)])
    mm.set_circuit(c)
    assert mm.circuit() == c
    with mm.learned("without"):
        out = tiny(**batch).logits
        out.float().pow(2).mean().backward()
    assert mm.masks["weight"].logits.grad is not None
    assert mm.masks["weight"].logits.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny.parameters())
    with mm.without(c):
        torch.testing.assert_close(out.detach(), logits(tiny, batch), atol=1e-5, rtol=0)
