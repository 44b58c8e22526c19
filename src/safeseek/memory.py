"""What a discovery step holds in accelerator memory, estimated before the run starts.

Weights and masks are counted exactly. Activations are measured, not guessed from a formula
per family: one short probe row runs forward under the learned masks while every tensor that
autograd saves for backward is counted once per storage (weights excluded), which gives the
bytes per token of this model, dtype and attention kernel. With gradient checkpointing a layer
keeps only its input, plus one layer's activations while that layer is recomputed.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from safeseek.errors import SafeSeekError
from safeseek.masking import MaskedModel

GIB = 2**30
PROBE_TOKENS = 64


@dataclass(frozen=True)
class MemoryEstimate:
    """Bytes per process at the peak of a step (the largest view's forward and backward)."""

    weights: int
    masks: int
    activations: int
    logits: int
    rows: int
    tokens: int

    @property
    def total(self) -> int:
        return self.weights + self.masks + self.activations + self.logits

    def describe(self) -> str:
        def gib(n: int) -> str:
            return f"{n / GIB:.2f} GiB"

        return (
            f"memory per process, estimated: weights {gib(self.weights)} + activations "
            f"{gib(self.activations)} ({self.rows} rows x {self.tokens} tokens) + logits "
            f"{gib(self.logits)} + masks {gib(self.masks)} = {gib(self.total)}"
        )


def enable_checkpointing(model: nn.Module) -> None:
    """Recompute each decoder layer during backward instead of keeping its activations.

    Transformers checkpoints a layer only while that layer is in training mode; the flag is
    set on the decoder layers alone, so dropout inside them stays off as in evaluation.
    """
    layers = _layers(model)
    if not layers or not getattr(model, "supports_gradient_checkpointing", False):
        raise SafeSeekError(f"{type(model).__name__} does not support gradient checkpointing")
    kwargs = {"use_reentrant": False}
    if hasattr(model, "activation_checkpointing_enable"):
        model.activation_checkpointing_enable(kwargs)
    else:  # its name before transformers 5.2x
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs=kwargs)
    for layer in layers:
        layer.training = True


def _layers(model: nn.Module) -> list[nn.Module]:
    from transformers.modeling_layers import GradientCheckpointingLayer

    return [m for m in model.modules() if isinstance(m, GradientCheckpointingLayer)]


def weight_bytes(model: nn.Module) -> int:
    """Bytes of the model's parameters and buffers, shared (tied) tensors counted once."""
    seen: dict[int, int] = {}
    for t in [*model.parameters(), *model.buffers()]:
        local = t.to_local() if hasattr(t, "to_local") else t  # this process's FSDP shard
        seen[local.data_ptr()] = local.numel() * local.element_size()
    return sum(seen.values())


def saved_bytes_per_token(mm: MaskedModel, tokens: int = PROBE_TOKENS) -> float:
    """Bytes autograd saves for backward per token of one row, under the learned masks."""
    model = mm.model
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        # weights (FSDP's gathered ones too) are parameters or views of one
        if not isinstance(t, nn.Parameter) and not isinstance(t._base, nn.Parameter):
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
        return t

    vocab = getattr(model.config.get_text_config(), "vocab_size", 1000)
    ids = torch.arange(tokens, device=mm._device)[None] % min(vocab, 1000)
    layers = _layers(model)  # measured without checkpointing; `estimate` accounts for it
    flags = [layer.training for layer in layers]
    for layer in layers:
        layer.training = False
    try:
        with mm.learned(), torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            mm.parts.backbone(input_ids=ids, attention_mask=torch.ones_like(ids), use_cache=False)
    finally:
        for layer, flag in zip(layers, flags, strict=True):
            layer.training = flag
    return sum(storages.values()) / tokens


def estimate(
    mm: MaskedModel,
    rows: int,
    tokens: int,
    labelled: int,
    checkpointing: bool = False,
) -> MemoryEstimate:
    """Peak memory of a step that runs `rows` rows padded to `tokens` tokens with `labelled`
    labelled positions (weights: this process's share under FSDP)."""
    model = mm.model
    per_token = saved_bytes_per_token(mm)
    if checkpointing:
        n_layers = mm.arch.n_layers
        dtype_bytes = next(model.parameters()).element_size()
        per_token = n_layers * mm.arch.hidden_size * dtype_bytes + per_token / n_layers
    vocab = model.get_output_embeddings().weight.shape[0]
    dtype_bytes = model.get_output_embeddings().weight.element_size()
    # model-dtype logits, their fp32 copy, log-probabilities and the gradient of each
    logits = labelled * vocab * (2 * dtype_bytes + 3 * 4)
    # logits, gradient and two AdamW moments in fp32 per mask logit
    masks = sum(m.logits.numel() for m in mm.masks.values()) * 4 * 4
    return MemoryEstimate(
        weights=weight_bytes(model),
        masks=masks,
        activations=int(per_token * rows * tokens),
        logits=logits,
        rows=rows,
        tokens=tokens,
    )
