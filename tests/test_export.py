"""Export: the surgically edited checkpoint equals MaskedModel.without(c), on every family,
and loads in a process that never imports SafeSeek."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from conftest import build, tiny_tokenizer
from helpers import logits
from transformers import AutoModelForCausalLM

from safeseek import Circuit, MaskedModel, SafeSeekError
from safeseek.export import export
from safeseek.models import architecture

# Families whose output projections have a bias to fold means into, or whose config declares
# one (Llama: attention_bias and mlp_bias); the others refuse mean export.
MEAN_EXPORTABLE = ("gpt2", "gpt_neox", "phi", "llama")


GRANULARITIES = ("head", "neuron", "layer", "weight")


def circuit_for(model) -> Circuit:
    """Units of every granularity; weight units in both matrices, some inside the ablated
    neuron's column and the ablated MLP block."""
    arch = architecture(model)
    inter, per_layer = arch.intermediate_size, arch.units_per_layer("weight")
    attn_entries = arch.hidden_size * arch.n_heads * arch.head_dim
    return Circuit(
        heads=[(0, 1), (1, 3)],
        neurons=[(0, 2), (1, inter - 1)],
        layers=[(1, "mlp")],
        weights=[
            (0, 5),
            (0, attn_entries + 2),
            (0, attn_entries + inter + 9),
            (1, 0),
            (1, per_layer - 1),
        ],
    )


def test_export_equals_without_view(family, tiny, batch, tmp_path):
    c = circuit_for(tiny)
    mm = MaskedModel(tiny, granularities=GRANULARITIES)
    with mm.without(c):
        want = logits(tiny, batch)
    before = {k: v.clone() for k, v in tiny.state_dict().items()}
    export(tiny, None, c, tmp_path / "out")
    assert all(torch.equal(v, before[k]) for k, v in tiny.state_dict().items())  # a copy
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(reloaded, batch), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", MEAN_EXPORTABLE)
def test_mean_export_equals_mean_ablation(name, batch, tmp_path):
    model = build(name)
    c = circuit_for(model)
    mm = MaskedModel(model, granularities=GRANULARITIES, ablation="mean", reference=[batch])
    with mm.without(c):
        want = logits(model, batch)
    export(model, None, c, tmp_path / "out", means=mm.means)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(reloaded, batch), want, atol=1e-5, rtol=0)


def test_mean_export_declares_the_biases_it_needs(batch, tmp_path):
    model = build("llama")
    mm = MaskedModel(model, ablation="mean", reference=[batch])
    export(model, None, Circuit(heads=[(1, 2)]), tmp_path / "out", means=mm.means)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out")
    assert reloaded.config.attention_bias and not reloaded.config.mlp_bias
    attn = reloaded.model.layers[0].self_attn
    assert torch.equal(attn.q_proj.bias, torch.zeros_like(attn.q_proj.bias))
    assert model.model.layers[0].self_attn.o_proj.bias is None  # the original is untouched


def test_mean_export_of_heads_where_only_attention_can_take_a_bias(batch, tmp_path):
    model = build("qwen3")  # attention_bias, no mlp_bias
    c = Circuit(heads=[(0, 1), (1, 3)])
    mm = MaskedModel(model, ablation="mean", reference=[batch])
    with mm.without(c):
        want = logits(model, batch)
    export(model, None, c, tmp_path / "out", means=mm.means)
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(reloaded, batch), want, atol=1e-5, rtol=0)


@pytest.mark.parametrize(
    ("name", "circuit"),
    [
        ("qwen2", Circuit(heads=[(0, 0)])),
        ("mistral", Circuit(heads=[(0, 0)])),
        ("qwen3", Circuit(neurons=[(0, 0)])),
    ],
)
def test_mean_export_needs_a_bias(name, circuit, batch, tmp_path):
    model = build(name)
    mm = MaskedModel(model, ablation="mean", reference=[batch])
    with pytest.raises(SafeSeekError, match="--ablation zero"):
        export(model, None, circuit, tmp_path / "out", means=mm.means)
    assert not (tmp_path / "out").exists()


def test_exported_model_loads_without_safeseek(batch, tmp_path):
    model = build("llama")
    c = circuit_for(model)
    with MaskedModel(model, granularities=GRANULARITIES).without(c):
        want = logits(model, batch)
    export(model, tiny_tokenizer(), c, tmp_path / "out")
    script = (
        "import json, sys, torch\n"
        "from transformers import AutoModelForCausalLM, AutoTokenizer\n"
        f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'out')!r}).eval()\n"
        f"AutoTokenizer.from_pretrained({str(tmp_path / 'out')!r})\n"
        f"ids = torch.tensor({batch['input_ids'].tolist()})\n"
        f"mask = torch.tensor({batch['attention_mask'].tolist()})\n"
        "out = m(input_ids=ids, attention_mask=mask).logits\n"
        "assert not any(k.startswith('safeseek') for k in sys.modules)\n"
        "print(json.dumps(out.tolist()))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, cwd=tmp_path, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    got = torch.tensor(json.loads(proc.stdout.strip().splitlines()[-1]))
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)


def test_cli_export(tmp_path, batch):
    model = build("gpt2")
    model.save_pretrained(tmp_path / "model")
    tiny_tokenizer().save_pretrained(tmp_path / "model")
    c = circuit_for(model)
    mm = MaskedModel(model, granularities=GRANULARITIES)
    saved = Circuit(
        heads=c.heads, neurons=c.neurons, layers=c.layers, weights=c.weights, metadata=mm.metadata()
    )
    saved.save(tmp_path / "circuit.json")  # weight units beside it, read back by the CLI
    with mm.without(c):
        want = logits(model, batch)
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "safeseek",
            "export",
            "--model",
            str(tmp_path / "model"),
            "--circuit",
            str(tmp_path / "circuit.json"),
            "--out",
            str(tmp_path / "out"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "out").eval()
    torch.testing.assert_close(logits(reloaded, batch), want, atol=1e-5, rtol=0)
    assert json.loads((tmp_path / "out" / "safeseek_export.json").read_text())["ablation"] == "zero"
