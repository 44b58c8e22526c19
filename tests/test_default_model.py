"""Integration: the embedded SmolLM2-135M-Instruct, loaded from the cache, masked and generating."""

from __future__ import annotations

import pytest
import torch

from safeseek import Circuit, MaskedModel, load_model
from safeseek.evaluate import generate

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def default_model():
    return load_model("default", device="cpu")


def test_shapes_of_the_embedded_model(default_model):
    model, tokenizer = default_model
    mm = MaskedModel(model)
    assert (mm.arch.n_layers, mm.arch.n_heads, mm.arch.n_kv_heads) == (30, 9, 3)
    assert mm.num_units == {"head": 30 * 9, "neuron": 30 * 1536}
    assert tokenizer.chat_template
    assert model.dtype == torch.float32


def test_generates_with_and_without_a_circuit(default_model):
    model, tokenizer = default_model
    mm = MaskedModel(model)
    prompts = ["What is the capital of France?", "What is 2 + 3?"]
    full = generate(model, tokenizer, prompts, max_new_tokens=16)
    assert "Paris" in full[0]
    with mm.without(Circuit()):
        assert generate(model, tokenizer, prompts, max_new_tokens=16) == full
    circuit = Circuit(
        heads=[(layer, h) for layer in range(4) for h in range(9)],
        neurons=[(0, j) for j in range(1536)],
    )
    assert circuit.sparsity(mm)["overall"] < 0.05
    with mm.without(circuit):
        ablated = generate(model, tokenizer, prompts, max_new_tokens=16)
    assert all(ablated) and ablated != full
    assert generate(model, tokenizer, prompts, max_new_tokens=16) == full  # restored
