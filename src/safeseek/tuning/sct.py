"""Safety Circuit Tuning: fine-tune only a circuit, or everything except it.

Full-parameter tuning masks gradients to the allowed entries (parameters with none allowed are
frozen outright); with AdamW and no weight decay an entry whose gradient is always zero never
moves, so the frozen part is bit-for-bit unchanged. LoRA tuning restricts the low-rank update
`B @ A` the same way: a projection owned by rows (q/k/v, gate/up) trains only the allowed rows
of `B` (which starts at zero); one owned by input columns (output and down projections) has the
disallowed columns of `A` zeroed and kept at zero. The merged update is then exactly zero
outside the allowed entries.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import torch
from peft import LoraConfig
from peft.tuners.lora import LoraLayer
from rich.console import Console
from torch import nn

from safeseek.circuit import Circuit
from safeseek.data.encode import Encoded, pad_token_id
from safeseek.distributed import rank_and_world, shard_weights, shards_weights
from safeseek.errors import SafeSeekError
from safeseek.models.adapters import family_of
from safeseek.models.geometry import in_features, is_projection, out_features
from safeseek.training import fit, with_lora
from safeseek.tuning.anchor import CircuitAnchor
from safeseek.tuning.ownership import Owned, ownership

MODES = ("circuit-only", "exclude-circuit")
METHODS = ("full", "lora")
DEFAULT_LR = {"full": 2e-5, "lora": 5e-4}


@dataclass(frozen=True)
class TuneConfig:
    """Settings of one tuning run; `lr=None` takes the method's default."""

    mode: str
    method: str = "full"
    steps: int = 100
    lr: float | None = None
    batch_size: int = 8
    rank: int = 8
    seed: int = 0
    anchor_weight: float = 0.0  # > 0: keep the circuit's activations (tuning/anchor.py)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise SafeSeekError(f"unknown mode {self.mode!r}; choose from {', '.join(MODES)}")
        if self.method not in METHODS:
            raise SafeSeekError(f"unknown method {self.method!r}; choose {' or '.join(METHODS)}")
        if self.steps < 1 or self.batch_size < 1 or self.rank < 1:
            raise SafeSeekError("steps, batch size and rank must be positive")
        if self.anchor_weight < 0:
            raise SafeSeekError(f"the anchor weight must be >= 0, got {self.anchor_weight}")
        if self.anchor_weight and self.mode != "exclude-circuit":
            raise SafeSeekError(
                "the anchor keeps a frozen circuit's function while the rest trains: "
                "use it with --mode exclude-circuit"
            )

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "lr": self.learning_rate}


def _masked(mask: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    return lambda grad: grad * mask.to(grad.dtype)


def _allowed(mask: torch.Tensor | None, mode: str, like: torch.Tensor) -> torch.Tensor:
    """Entries that may change: the owned ones (circuit-only) or the rest."""
    if mask is None:
        mask = torch.zeros_like(like, dtype=torch.bool)
    return mask if mode == "circuit-only" else ~mask


def _freeze_full(
    model: nn.Module, circuit: Circuit, mode: str, hooks: bool = True
) -> tuple[list, int, dict[str, torch.Tensor]]:
    """Set requires_grad, and gradient masks (hooks) for the partly trainable parameters;
    returns the hooks, the number of trainable entries and those parameters' masks."""
    masks = ownership(model, circuit).parameter_masks(model)
    handles, trainable, partial = [], 0, {}
    for name, p in model.named_parameters():
        allowed = _allowed(masks.get(name), mode, p)
        p.requires_grad_(bool(allowed.any()))
        trainable += int(allowed.sum())
        if p.requires_grad and not allowed.all():
            partial[name] = allowed
            if hooks:
                handles.append(p.register_hook(_masked(allowed)))
    return handles, trainable, partial


def _sharded_gradient_masks(
    model: nn.Module, partial: dict[str, torch.Tensor]
) -> Callable[[], None]:
    """For FSDP: a function that zeroes the disallowed entries of this process's gradient
    shards. FSDP hands sharded parameters their gradients outside autograd, so hooks on
    them never fire; it shards dim 0 the way `torch.chunk` splits it."""
    rank, world = rank_and_world()
    params = dict(model.named_parameters())
    local: dict[nn.Parameter, torch.Tensor] = {}
    for name, allowed in partial.items():
        p = params[name]
        pieces = allowed.chunk(world, dim=0)
        piece = pieces[rank] if rank < len(pieces) else allowed[:0]
        if piece.shape != p.to_local().shape:
            raise SafeSeekError(f"{name}: FSDP shard {tuple(p.to_local().shape)} is not a chunk")
        local[p] = piece.to(p.to_local().device)

    def apply() -> None:
        for p, mask in local.items():
            if p.grad is not None:
                grad = p.grad.to_local()
                grad.mul_(mask.to(grad.dtype))

    return apply


def _lora_restriction(owned: Owned | None, mode: str, module: nn.Module):
    """(rows of B, columns of A) that may train in one projection; None: no LoRA there."""
    if owned is not None and owned.entries is not None:
        raise SafeSeekError(
            "LoRA updates whole rows and columns and cannot keep to single weight entries: "
            "tune a circuit with weight units with --method full"
        )
    all_rows = torch.ones(out_features(module), dtype=torch.bool)
    all_cols = torch.ones(in_features(module), dtype=torch.bool)
    rows = owned.rows if owned is not None else ~all_rows
    cols = owned.cols if owned is not None else ~all_cols
    whole = bool(rows.all() or cols.all())
    if rows.any() and cols.any() and not whole:
        raise SafeSeekError("a projection owned by both rows and columns cannot be LoRA-restricted")
    if mode == "circuit-only":
        if whole:
            return all_rows, all_cols
        if not (rows.any() or cols.any()):
            return None
        return (rows if rows.any() else all_rows), (cols if cols.any() else all_cols)
    return None if whole else (~rows, ~cols)


def _wrap_lora(model: nn.Module, circuit: Circuit, mode: str, rank: int, seed: int):
    """A PEFT model whose LoRA updates can only touch the allowed entries."""
    owned = ownership(model, circuit).modules
    restrictions = {}
    _, fam = family_of(model)
    layer_prefix = f"{fam.layers_path}."
    for name, module in model.named_modules():
        if not name.startswith(layer_prefix) or not is_projection(module):
            continue
        restriction = _lora_restriction(owned.get(name), mode, module)
        if restriction is not None:
            restrictions[name] = restriction
    if not restrictions:
        raise SafeSeekError("nothing to tune: the circuit owns no projection")
    torch.manual_seed(seed)
    config = LoraConfig(
        r=rank, lora_alpha=2 * rank, target_modules=sorted(restrictions), lora_dropout=0.0
    )
    peft_model = with_lora(model, config)
    handles = []
    for name, module in peft_model.get_base_model().named_modules():
        if not isinstance(module, LoraLayer) or name not in restrictions:
            continue
        rows, cols = restrictions[name]
        a, b = module.lora_A["default"].weight, module.lora_B["default"].weight
        with torch.no_grad():
            a[:, ~cols.to(a.device)] = 0
            b[~rows.to(b.device)] = 0
        handles.append(a.register_hook(_masked(cols.to(a.device)[None, :])))
        handles.append(b.register_hook(_masked(rows.to(b.device)[:, None])))
    trainable = sum(p.numel() for p in peft_model.parameters() if p.requires_grad)
    return peft_model, handles, trainable


def tune(
    model: nn.Module,
    tokenizer: Any,
    circuit: Circuit,
    examples: Sequence[Encoded],
    config: TuneConfig,
    console: Console | None = None,
    anchor: Sequence[Encoded] = (),
) -> tuple[nn.Module, dict[str, Any]]:
    """Fine-tune `model` on `examples` under `config.mode` around `circuit`; returns the tuned
    plain model (LoRA merged) and a summary (trainable entries, losses). With
    `config.anchor_weight`, the circuit's activations on the `anchor` examples are kept close
    to the model's before tuning (see `safeseek.tuning.anchor`)."""
    if not examples:
        raise SafeSeekError("no training examples")
    if bool(config.anchor_weight) != bool(anchor):
        raise SafeSeekError("the anchor needs both anchor prompts and a positive anchor weight")
    sharded = shards_weights()
    if sharded and config.method == "lora":
        raise SafeSeekError(
            "LoRA tuning does not shard weights; launch it with a data-parallel config "
            "(e.g. examples/accelerate/cpu-2-processes.yaml, or distributed_type MULTI_GPU)"
        )
    if circuit.is_empty() and config.mode == "circuit-only":
        raise SafeSeekError("circuit-only tuning needs a non-empty circuit")
    pad_id = pad_token_id(tokenizer)
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    before_step = None
    if config.method == "full":
        handles, trainable, partial = _freeze_full(model, circuit, config.mode, not sharded)
        target = model
        if sharded:
            shard_weights(model)
            before_step = _sharded_gradient_masks(model, partial)
    else:
        target, handles, trainable = _wrap_lora(
            model, circuit, config.mode, config.rank, config.seed
        )
    label = f"tune ({config.mode}, {config.method})"
    keep = None
    if anchor:
        keep = CircuitAnchor(
            target, circuit, anchor, pad_id, config.anchor_weight, config.batch_size, config.seed
        )
    try:
        losses = fit(
            target,
            examples,
            pad_id,
            config.steps,
            config.learning_rate,
            config.batch_size,
            config.seed,
            label=label,
            console=console,
            sharded=sharded,
            before_step=before_step,
            extra_loss=keep.loss if keep is not None else None,
        )
    finally:
        for handle in handles:
            handle.remove()
    tuned = target.merge_and_unload() if config.method == "lora" else target
    for name, p in tuned.named_parameters():
        p.requires_grad_(flags.get(name, False))
    summary = {
        **config.to_dict(),
        "trainable_entries": trainable,
        "processes": rank_and_world()[1],
        "fsdp": sharded,
        "circuit": circuit.counts(),
        "loss_first": losses[0],
        "loss_last": losses[-1],
        "loss_tail": sum(losses[-10:]) / len(losses[-10:]),  # last steps' mean: less noisy
    }
    if keep is not None:
        summary |= {"anchor_first": keep.history[0], "anchor_last": keep.history[-1]}
    return tuned.eval(), summary
