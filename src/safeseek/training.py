"""The one supervised fine-tuning loop (organisms and Safety Circuit Tuning share it).

AdamW without weight decay (decay would move entries whose gradient is masked to zero), linear
warm-up over the first 10 steps, gradient clipping at 1, logits only at labelled positions, a
batch of short and long examples run as two parts (`by_length`), and bf16 autocast over fp32
weights where the hardware computes in bf16 natively.
"""

from __future__ import annotations

import contextlib
import random
import warnings
from collections.abc import Callable, Mapping, Sequence

import torch
from peft import LoraConfig, get_peft_model
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn
from torch import nn

from safeseek.data.encode import Encoded, pad
from safeseek.distributed import is_main, rank_and_world, sum_gradients, sum_over_processes
from safeseek.forward import Reference, labelled_logits
from safeseek.models.adapters import locate
from safeseek.models.load import fast_dtype


def with_lora(model: nn.Module, config: LoraConfig) -> nn.Module:
    """`get_peft_model`, without the FutureWarning it triggers inside transformers (peft asks
    for a deprecated gradient-checkpointing attribute); nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*checkpointing.*")
        return get_peft_model(model, config)


def autocast_for(model: nn.Module) -> contextlib.AbstractContextManager:
    """bf16 autocast where the hardware computes in bf16 natively and the weights are fp32."""
    first = next(model.parameters())
    if fast_dtype(first.device) == torch.bfloat16 and first.dtype == torch.float32:
        return torch.autocast(first.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def fit(
    model: nn.Module,
    examples: Sequence[Encoded],
    pad_id: int,
    steps: int,
    lr: float,
    batch_size: int = 8,
    seed: int = 0,
    label: str = "fine-tune",
    console: Console | None = None,
    sharded: bool = False,
    before_step: Callable[[], None] | None = None,
    extra_loss: Callable[[], torch.Tensor] | None = None,
    teacher: Mapping[int, Reference] | None = None,
    teacher_and_tokens: bool = False,
) -> list[float]:
    """Train the parameters of `model` that require grad on `examples` for `steps` steps
    (shuffled epochs, seeded); returns the loss of every step.

    Over several processes each computes its share of every batch and the gradients are
    summed (see `safeseek.distributed`): the result depends on the batch, not the processes.
    `sharded`: the model is FSDP-sharded, which sums gradients itself (as a mean, hence the
    scaling). `before_step` runs after the gradients are complete, before clipping.
    `extra_loss` (e.g. SCT's circuit anchor) is added to every step's loss; the returned
    losses are the fine-tuning loss alone, so runs with and without it compare.
    `teacher` maps an example (by `id`) to a distribution over its labelled positions: such an
    example is scored by KL(teacher || model) instead of cross-entropy to its tokens
    (distillation of a whole distribution, e.g. the base model's, not only its greedy answer);
    with `teacher_and_tokens`, by the sum of the two (the KL keeps the distribution's shape, the
    cross-entropy its argmax where the distribution is flat: README, "Model organisms").
    """
    torch.manual_seed(seed)
    rng = random.Random(seed)
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: min(1.0, (s + 1) / 10))
    parts = locate(model)
    device = next(model.parameters()).device
    autocast = autocast_for(model)
    order: list[int] = []
    losses: list[float] = []
    model.train()
    columns = (
        TextColumn(f"[bold]{label}[/bold]"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
        TextColumn("loss {task.fields[loss]}"),
    )
    rank, world = rank_and_world()
    console = console or Console(stderr=True)
    with Progress(*columns, console=console, disable=not is_main()) as bar:
        task = bar.add_task(label, total=steps, loss="-")
        for _ in range(steps):
            if len(order) < batch_size:
                extra = list(range(len(examples)))
                rng.shuffle(extra)
                order += extra
            idx, order = order[:batch_size], order[batch_size:]
            chosen = [examples[i] for i in idx]
            mine = chosen[rank::world] or [chosen[0].unscored()]
            scored = max(sum(e.scored for e in chosen), 1)
            opt.zero_grad(set_to_none=True)
            loss = torch.zeros(())
            # FSDP needs the same forward passes on every process: one batch there.
            for part in [mine] if sharded else by_length(mine):
                batch = {k: v.to(device) for k, v in pad(part, pad_id).items()}
                with autocast:
                    logits, targets = labelled_logits(model, parts=parts, **batch)
                part_loss = _summed_loss(
                    logits.float(), targets, part, teacher or {}, teacher_and_tokens
                )
                part_loss = part_loss / scored
                (part_loss * world if sharded else part_loss).backward()
                loss = loss + part_loss.detach().cpu()
            if extra_loss is not None:
                with autocast:
                    extra = extra_loss()
                (extra * world if sharded else extra).backward()
            if not sharded:
                sum_gradients(params)
            if before_step is not None:
                before_step()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            sched.step()
            losses.append(sum_over_processes(loss.to(device)).item())
            bar.update(task, advance=1, loss=f"{losses[-1]:.3f}")
    model.eval()
    return losses


def by_length(examples: Sequence[Encoded]) -> list[list[Encoded]]:
    """`examples` as one batch, or as two of similar lengths where that pads at least a fifth
    fewer positions: a batch is padded to its longest example, and a jailbreak organism's
    compliant answers are twice as long as its refusals. The step's gradient is the same (each
    part's loss is normalised by the whole batch's labelled positions)."""
    ordered = sorted(examples, key=lambda e: len(e.input_ids))
    lengths = [len(e.input_ids) for e in ordered]
    n = len(ordered)

    def padded(k: int) -> int:  # positions with the first k (shortest) examples apart
        return k * lengths[k - 1] + (n - k) * lengths[-1]

    cut = min(range(1, n), key=padded, default=0)
    if not cut or padded(cut) > 0.8 * n * lengths[-1]:
        return [list(examples)]
    return [ordered[:cut], ordered[cut:]]


def _summed_loss(
    logits: torch.Tensor,
    targets: torch.Tensor,
    examples: Sequence[Encoded],
    teacher: Mapping[int, Reference],
    and_tokens: bool = False,
) -> torch.Tensor:
    """Cross-entropy summed over labelled positions; KL(teacher || model) over the rows of the
    examples that have a teacher (rows are in example order, see `labelled_logits`), instead of
    their cross-entropy or, with `and_tokens`, added to it."""
    taught = [id(e) in teacher for e in examples]
    if not any(taught):
        return torch.nn.functional.cross_entropy(logits, targets, reduction="sum")
    total = logits.new_zeros(())
    start = 0
    for e, has_teacher in zip(examples, taught, strict=True):
        rows = slice(start, start + e.scored)
        start += e.scored
        if has_teacher:
            total = total + teacher[id(e)].divergence(torch.log_softmax(logits[rows], dim=-1))
        if not has_teacher or and_tokens:
            total = total + torch.nn.functional.cross_entropy(
                logits[rows], targets[rows], reduction="sum"
            )
    return total
