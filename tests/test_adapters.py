"""Family adapters: every family resolves, and unsupported ones fail with a useful line."""

from __future__ import annotations

import pytest
import transformers
from conftest import FAMILY_NAMES, build

from safeseek import MaskedModel, SafeSeekError
from safeseek.models import FAMILIES, locate


def test_every_tested_family_is_supported_and_vice_versa():
    assert set(FAMILY_NAMES) == set(FAMILIES)


def test_locate_finds_one_projection_per_layer(family, tiny):
    parts = locate(tiny)
    assert len(parts.attn_out) == len(parts.mlp_out) == 2
    assert MaskedModel(tiny).num_units == {"head": 8, "neuron": 96}


def test_unsupported_family_lists_supported_ones():
    config = transformers.OPTConfig(
        vocab_size=64,
        hidden_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        ffn_dim=64,
        word_embed_proj_dim=32,
    )
    model = transformers.AutoModelForCausalLM.from_config(config)
    with pytest.raises(SafeSeekError) as err:
        MaskedModel(model)
    message = str(err.value)
    assert "'opt'" in message and "llama" in message and "gpt_neox" in message
    assert "\n" not in message


def test_peft_wrapped_model_is_unwrapped():
    from peft import LoraConfig, get_peft_model

    model = build("llama")
    peft_model = get_peft_model(model, LoraConfig(r=2, target_modules=["q_proj", "o_proj"]))
    parts = locate(peft_model)
    assert parts.arch.n_heads == 4


def test_unit_channels_are_where_each_head_and_neuron_enters_its_projection(family, tiny):
    """The geometry against the model itself: feeding only a unit's channels into its readout
    gives the same output as zeroing every other channel by hand, on the module's weight."""
    import torch

    from safeseek.models.geometry import expand, pool, site_modules, unit_channels

    parts = locate(tiny)
    arch = parts.arch
    for g, unit in (("head", 1), ("neuron", 5)):
        (module,) = site_modules(parts, g, 1)
        cols = unit_channels(arch, g, [unit])
        x = torch.zeros(1, arch.n_heads * arch.head_dim if g == "head" else arch.intermediate_size)
        x[0, cols] = 1.0
        bias = module.bias if module.bias is not None else 0.0
        with torch.no_grad():
            from_module = module(x) - bias
        conv1d = type(module).__name__ == "Conv1D"  # GPT-2 stores [in, out]
        weight = module.weight.T if conv1d else module.weight  # [out, in]
        assert torch.allclose(from_module[0], weight[:, cols].sum(1), atol=1e-6)
        keep = torch.zeros(arch.n_layers, arch.units_per_layer(g))
        keep[1, unit] = 1.0
        channels = expand(arch, g, keep)
        assert channels[1].nonzero().flatten().tolist() == cols
        assert torch.equal(pool(arch, g, channels), keep * len(cols))
