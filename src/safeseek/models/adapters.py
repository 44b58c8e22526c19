"""Architecture adapters: where the maskable parts of each model family live.

An adapter is data, not a forked modelling file: for each family, the module paths of the
decoder stack, the attention output projection (whose input is the concatenation of the heads)
and the MLP down projection (whose input channels are the neurons), plus the config fields that
give the shapes. Masks act on the *inputs* of those two projections, so grouped-query attention
needs no ungrouping: query heads are separate there whatever the key/value sharing.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from torch import nn

from safeseek.errors import SafeSeekError
from safeseek.models.geometry import Architecture, ModelParts, in_features


@dataclass(frozen=True)
class Family:
    """Where one family keeps its parts; paths are dotted attribute paths."""

    backbone: str  # from the causal LM to the decoder stack
    layers: str  # from the decoder stack to its list of decoder layers
    attn_out: str  # from a decoder layer to the attention output projection
    mlp_out: str  # from a decoder layer to the MLP down projection
    n_layers: str = "num_hidden_layers"
    hidden: str = "hidden_size"
    n_heads: str = "num_attention_heads"
    n_kv_heads: str | None = "num_key_value_heads"  # None: every query head has its own K/V
    head_dim: str | None = "head_dim"  # None (or a None value): hidden // n_heads
    intermediate: str = "intermediate_size"  # a None value means 4 * hidden (GPT-2's n_inner)
    # Projections *into* the units, with the layout of their output rows (geometry.owned_rows):
    # these, plus the input columns of attn_out / mlp_out, are the parameters a unit owns.
    head_in: tuple[tuple[str, str], ...] = (
        ("self_attn.q_proj", "q"),
        ("self_attn.k_proj", "kv"),
        ("self_attn.v_proj", "kv"),
    )
    neuron_in: tuple[tuple[str, str], ...] = (
        ("mlp.gate_proj", "neuron"),
        ("mlp.up_proj", "neuron"),
    )
    attn_block: str = "self_attn"  # a whole-block ("layer") unit owns every parameter below it
    mlp_block: str = "mlp"

    @property
    def layers_path(self) -> str:
        """Dotted path from the causal LM to the list of decoder layers."""
        return f"{self.backbone}.{self.layers}"


_LLAMA_LIKE = Family(
    backbone="model", layers="layers", attn_out="self_attn.o_proj", mlp_out="mlp.down_proj"
)

FAMILIES: dict[str, Family] = {
    "llama": _LLAMA_LIKE,
    "mistral": _LLAMA_LIKE,
    "qwen2": _LLAMA_LIKE,
    "qwen3": _LLAMA_LIKE,
    "gemma": _LLAMA_LIKE,
    "gemma2": _LLAMA_LIKE,
    "phi3": replace(  # Llama's layout with fused q/k/v and gate/up projections
        _LLAMA_LIKE,
        head_in=(("self_attn.qkv_proj", "qkv"),),
        neuron_in=(("mlp.gate_up_proj", "gate_up"),),
    ),
    "phi": Family(
        backbone="model",
        layers="layers",
        attn_out="self_attn.dense",
        mlp_out="mlp.fc2",
        neuron_in=(("mlp.fc1", "neuron"),),
    ),
    "gpt2": Family(
        backbone="transformer",
        layers="h",
        attn_out="attn.c_proj",
        mlp_out="mlp.c_proj",
        n_layers="n_layer",
        hidden="n_embd",
        n_heads="n_head",
        n_kv_heads=None,
        head_dim=None,
        intermediate="n_inner",
        head_in=(("attn.c_attn", "qkv"),),
        neuron_in=(("mlp.c_fc", "neuron"),),
        attn_block="attn",
    ),
    "gpt_neox": Family(
        backbone="gpt_neox",
        layers="layers",
        attn_out="attention.dense",
        mlp_out="mlp.dense_4h_to_h",
        n_kv_heads=None,
        head_dim=None,
        head_in=(("attention.query_key_value", "qkv_interleaved"),),
        neuron_in=(("mlp.dense_h_to_4h", "neuron"),),
        attn_block="attention",
    ),
}


def unwrap(model: nn.Module) -> nn.Module:
    """The underlying transformers model of a PEFT wrapper (or the model itself)."""
    get_base = getattr(model, "get_base_model", None)
    return get_base() if callable(get_base) else model


def _get(obj: Any, path: str) -> Any:
    for name in path.split("."):
        obj = getattr(obj, name)
    return obj


def family_of(model: nn.Module) -> tuple[str, Family]:
    model_type = getattr(unwrap(model).config, "model_type", None)
    if model_type not in FAMILIES:
        raise SafeSeekError(
            f"unsupported architecture {model_type!r} ({type(unwrap(model)).__name__}); "
            f"supported families: {', '.join(sorted(FAMILIES))}"
        )
    return model_type, FAMILIES[model_type]


def architecture(model: nn.Module) -> Architecture:
    """Read the unit shapes of `model` from its config."""
    name, fam = family_of(model)
    config = unwrap(model).config.get_text_config()
    hidden = int(getattr(config, fam.hidden))
    n_heads = int(getattr(config, fam.n_heads))
    kv = getattr(config, fam.n_kv_heads, None) if fam.n_kv_heads else None
    head_dim = getattr(config, fam.head_dim, None) if fam.head_dim else None
    inter = getattr(config, fam.intermediate, None)
    return Architecture(
        family=name,
        n_layers=int(getattr(config, fam.n_layers)),
        n_heads=n_heads,
        n_kv_heads=int(kv) if kv else n_heads,
        head_dim=int(head_dim) if head_dim else hidden // n_heads,
        intermediate_size=int(inter) if inter else 4 * hidden,
        hidden_size=hidden,
    )


def locate(model: nn.Module) -> ModelParts:
    """Find the hook points of `model` and check they agree with its config."""
    _, fam = family_of(model)
    arch = architecture(model)
    base = unwrap(model)
    backbone = _get(base, fam.backbone)
    layers = _get(backbone, fam.layers)
    attn_out = tuple(_get(layer, fam.attn_out) for layer in layers)
    mlp_out = tuple(_get(layer, fam.mlp_out) for layer in layers)
    if len(layers) != arch.n_layers:
        raise SafeSeekError(f"config says {arch.n_layers} layers but the model has {len(layers)}")
    heads_width = arch.n_heads * arch.head_dim
    if in_features(attn_out[0]) != heads_width:
        raise SafeSeekError(
            f"{fam.attn_out} takes {in_features(attn_out[0])} inputs, expected "
            f"{arch.n_heads} heads x {arch.head_dim} = {heads_width}"
        )
    if in_features(mlp_out[0]) != arch.intermediate_size:
        raise SafeSeekError(
            f"{fam.mlp_out} takes {in_features(mlp_out[0])} inputs, expected "
            f"intermediate size {arch.intermediate_size}"
        )
    return ModelParts(
        arch=arch, backbone=backbone, layers=tuple(layers), attn_out=attn_out, mlp_out=mlp_out
    )
