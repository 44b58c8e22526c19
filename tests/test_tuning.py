"""Safety Circuit Tuning: the parameters a circuit owns, and tuning that respects them.

Ownership is checked functionally, not against the layout table: changing the owned entries of
the attention (MLP) input projections moves the circuit head's (neuron's) input to the output
projection and nothing outside its key/value group, and changing every other entry of those
projections leaves it exactly as it was.
"""

from __future__ import annotations

import copy

import pytest
import torch
from conftest import CASES, VOCAB, build
from helpers import module_at
from transformers.pytorch_utils import Conv1D

from safeseek import Circuit, SafeSeekError
from safeseek.data.encode import Encoded
from safeseek.forward import IGNORE
from safeseek.tuning import TuneConfig, ownership, tune


def head_dim_of(model) -> int:
    cfg = model.config
    return getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads


def out_proj_input(model, path: str, batch) -> torch.Tensor:
    """What the projection at `path` receives, for `batch`."""
    seen = {}
    handle = module_at(model, path).register_forward_pre_hook(
        lambda _m, args: seen.setdefault("x", args[0].detach().clone())
    )
    with torch.no_grad():
        model(**batch)
    handle.remove()
    return seen["x"]


def perturbed(model, names_masks: dict[str, torch.Tensor], seed: int = 3):
    """A copy with noise added to the masked entries of the named parameters."""
    model = copy.deepcopy(model)
    g = torch.Generator().manual_seed(seed)
    params = dict(model.named_parameters())
    with torch.no_grad():
        for name, mask in names_masks.items():
            p = params[name]
            p.add_(torch.randn(p.shape, generator=g) * mask)
    return model


def input_params(model, block: str, out_path: str) -> dict[str, torch.nn.Parameter]:
    """Parameters of a block feeding the units: all but the output projection and norms."""
    return {
        n: p
        for n, p in model.named_parameters()
        if n.startswith(block + ".") and not n.startswith(out_path + ".") and "norm" not in n
    }


def test_a_head_owns_exactly_what_feeds_it(family, tiny, batch):
    case = CASES[family]
    cfg = tiny.config
    n_heads = cfg.num_attention_heads
    n_kv = getattr(cfg, "num_key_value_heads", None) or n_heads
    hd = head_dim_of(tiny)
    head = 1
    circuit = Circuit(heads=[(0, head)])
    masks = ownership(tiny, circuit).parameter_masks(tiny)
    out_path = case.attn_out.format(i=0)
    block = out_path.rsplit(".", 1)[0]
    feeding = input_params(tiny, block, out_path)
    assert set(masks) - set(feeding) == {f"{out_path}.weight"}

    mask = masks[f"{out_path}.weight"]  # Linear stores [out, in], GPT-2's Conv1D [in, out]
    cols = mask.any(1) if isinstance(module_at(tiny, out_path), Conv1D) else mask.any(0)
    assert cols.nonzero().flatten().tolist() == list(range(head * hd, (head + 1) * hd))

    before = out_proj_input(tiny, out_path, batch).reshape(*batch["input_ids"].shape, n_heads, hd)
    owned = {n: masks.get(n, torch.zeros_like(p, dtype=torch.bool)) for n, p in feeding.items()}
    moved = out_proj_input(perturbed(tiny, owned), out_path, batch).reshape(before.shape)
    changed = (moved - before).abs().amax(dim=(0, 1, 3)) > 0
    group = n_heads // n_kv
    sharing = {h for h in range(n_heads) if h // group == head // group}
    assert changed[head]
    assert {h for h in range(n_heads) if changed[h]} <= sharing

    rest = {n: ~m for n, m in owned.items()}
    kept = out_proj_input(perturbed(tiny, rest), out_path, batch).reshape(before.shape)
    assert torch.equal(kept[..., head, :], before[..., head, :])


def test_a_neuron_owns_exactly_what_feeds_it(family, tiny, batch):
    case = CASES[family]
    neuron = 5
    masks = ownership(tiny, Circuit(neurons=[(1, neuron)])).parameter_masks(tiny)
    out_path = case.mlp_out.format(i=1)
    block = out_path.rsplit(".", 1)[0]
    feeding = input_params(tiny, block, out_path)
    assert set(masks) - set(feeding) == {f"{out_path}.weight"}
    before = out_proj_input(tiny, out_path, batch)
    owned = {n: masks.get(n, torch.zeros_like(p, dtype=torch.bool)) for n, p in feeding.items()}
    moved = out_proj_input(perturbed(tiny, owned), out_path, batch)
    changed = (moved - before).abs().amax(dim=(0, 1)) > 0
    assert changed.nonzero().flatten().tolist() == [neuron]
    kept = out_proj_input(perturbed(tiny, {n: ~m for n, m in owned.items()}), out_path, batch)
    assert torch.equal(kept[..., neuron], before[..., neuron])


def test_a_block_unit_owns_the_whole_block(tiny, family):
    case = CASES[family]
    masks = ownership(tiny, Circuit(layers=[(1, "mlp")])).parameter_masks(tiny)
    block = case.mlp_out.format(i=1).rsplit(".", 1)[0]
    in_block = {n for n, _ in tiny.named_parameters() if n.startswith(block + ".")}
    assert set(masks) == in_block and all(m.all() for m in masks.values())


def test_a_weight_unit_owns_its_entry_only(tiny, family):
    case = CASES[family]
    o_proj = module_at(tiny, case.attn_out.format(i=1))
    n_in = o_proj.weight.shape[0 if isinstance(o_proj, Conv1D) else 1]
    r, c = 3, 2  # entry (r, c) of the attention output projection seen [out, in]
    masks = ownership(tiny, Circuit(weights=[(1, r * n_in + c)])).parameter_masks(tiny)
    name = f"{case.attn_out.format(i=1)}.weight"
    assert set(masks) == {name} and int(masks[name].sum()) == 1
    assert masks[name][(c, r) if isinstance(o_proj, Conv1D) else (r, c)]


def test_tuning_keeps_to_weight_units(tiny):
    circuit = Circuit(weights=[(0, 7), (1, 64 * 64 + 100)])
    masks = ownership(tiny, circuit).parameter_masks(tiny)
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    config = TuneConfig(mode="circuit-only", steps=3, lr=5e-2, batch_size=4)
    tuned, summary = tune(copy.deepcopy(tiny), PadOnly(), circuit, examples(), config)
    moved = changes(before, tuned)
    assert summary["trainable_entries"] == 2
    assert {n for n, c in moved.items() if c.any()} <= set(masks)
    assert all(torch.equal(moved[n] | m, m) for n, m in masks.items())
    with pytest.raises(SafeSeekError, match="--method full"):
        tune(
            copy.deepcopy(tiny),
            PadOnly(),
            circuit,
            examples(),
            TuneConfig(mode="circuit-only", method="lora"),
        )


# -- tuning ----------------------------------------------------------------------------------


class PadOnly:
    pad_token_id = 0


def examples(n: int = 12, seed: int = 0) -> list[Encoded]:
    g = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(n):
        prompt = torch.randint(3, VOCAB, (5,), generator=g).tolist()
        response = torch.randint(3, VOCAB, (4,), generator=g).tolist()
        out.append(Encoded(prompt + response, [IGNORE] * 5 + response))
    return out


CIRCUIT = Circuit(heads=[(0, 1), (1, 3)], neurons=[(0, 5), (1, 7)])


def changes(before: dict, after: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() != before[n] for n, p in after.named_parameters()}


@pytest.mark.parametrize("method", ["full", "lora"])
@pytest.mark.parametrize("mode", ["circuit-only", "exclude-circuit"])
def test_tuning_moves_only_what_it_may(family, tiny, mode, method):
    circuit = CIRCUIT.union(Circuit(layers=[(1, "attn")])) if family == "llama" else CIRCUIT
    masks = ownership(tiny, circuit).parameter_masks(tiny)
    before = {n: p.detach().clone() for n, p in tiny.named_parameters()}
    config = TuneConfig(mode=mode, method=method, steps=3, lr=5e-2, batch_size=4)
    tuned, summary = tune(copy.deepcopy(tiny), PadOnly(), circuit, examples(), config)
    moved = changes(before, tuned)
    inside = sum(int((moved[n] & m).sum()) for n, m in masks.items())
    outside = sum(int((c & ~masks.get(n, torch.zeros_like(c))).sum()) for n, c in moved.items())
    if mode == "circuit-only":
        assert outside == 0 and inside > 0
    else:
        assert inside == 0 and outside > 0
    assert summary["trainable_entries"] > 0
    flags = {n: p.requires_grad for n, p in tiny.named_parameters()}
    assert {n: p.requires_grad for n, p in tuned.named_parameters()} == flags  # restored
    assert type(tuned) is type(tiny)  # LoRA merged back into a plain model


def test_circuit_only_needs_a_circuit():
    with pytest.raises(SafeSeekError, match="non-empty"):
        tune(build("llama"), PadOnly(), Circuit(), examples(), TuneConfig(mode="circuit-only"))


def test_bad_mode_is_refused():
    with pytest.raises(SafeSeekError, match="circuit-only, exclude-circuit"):
        TuneConfig(mode="everything")
