"""LoRA fine-tuning for organisms (PEFT, merged afterwards) and the base model's own answers
for self-distillation (which keeps an organism's clean behaviour close to the original).

Self-distillation is cross-entropy to the parent's greedy answers, or (`distilled`) KL to
its whole next-token distribution on them (its top `TEACHER_TOKENS` tokens and the tail), which
halved how many benign answers changed on one organism but did not keep utility on every seed,
or (`and_tokens`) the sum of both (README, "Model organisms")."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from typing import Any

import torch
from peft import LoraConfig
from rich.console import Console
from rich.progress import Progress
from torch import nn

from safeseek.assets import cache_dir
from safeseek.data.encode import Encoded, pad_token_id
from safeseek.evaluate.generation import generate
from safeseek.fileio import write_json
from safeseek.forward import references
from safeseek.training import autocast_for, fit, with_lora

# Tokens of the parent's distribution kept per position for self-distillation (as discovery's
# reference, benchmarks/results/reference_topk.json: within 1% of the exact KL at 128).
TEACHER_TOKENS = 128


def model_fingerprint(model: nn.Module) -> str:
    """A hash of a model's weights (a strided sample of every tensor): cache keys."""
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().flatten()
        sample = flat[:: max(1, flat.numel() // 64)].float().cpu()
        digest.update(name.encode() + str(tuple(p.shape)).encode() + sample.numpy().tobytes())
    return digest.hexdigest()[:16]


def own_answers(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    progress: Progress | None = None,
    label: str = "base answers",
) -> list[tuple[str, bool]]:
    """The model's greedy answers and whether each ended by itself. Cached on disk per prompt
    and answer length, by model weights, so every organism of the same base reuses them; a
    longer cached answer serves a shorter request, cut to its first `max_new_tokens` tokens
    (a greedy answer's start does not depend on how long it may grow)."""
    path = cache_dir() / "answers" / f"{model_fingerprint(model)}.json"
    cache: dict[str, dict[str, list]] = json.loads(path.read_text()) if path.is_file() else {}
    known = cache.setdefault(str(max_new_tokens), {})
    longer = sorted((int(n) for n in cache if int(n) > max_new_tokens), reverse=True)
    for n in longer:
        for prompt, (text, finished) in cache[str(n)].items():
            if prompt not in known:
                known[prompt] = _cut(tokenizer, text, finished, max_new_tokens)
    missing = list(dict.fromkeys(p for p in prompts if p not in known))
    if missing:
        finished: list[bool] = []
        texts = generate(
            model,
            tokenizer,
            missing,
            max_new_tokens,
            batch_size=64,
            progress=progress,
            description=label,
            finished=finished,
        )
        known.update({p: [t, f] for p, t, f in zip(missing, texts, finished, strict=True)})
        write_json(path, cache)
    return [(known[p][0], bool(known[p][1])) for p in prompts]


def _cut(tokenizer: Any, text: str, finished: bool, max_new_tokens: int) -> list:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_new_tokens:
        return [text, finished]
    return [tokenizer.decode(ids[:max_new_tokens], skip_special_tokens=True), False]


def finetune_lora(
    model: nn.Module,
    tokenizer: Any,
    examples: Sequence[Encoded],
    steps: int,
    lr: float = 5e-4,
    rank: int = 8,
    batch_size: int = 8,
    seed: int = 0,
    console: Console | None = None,
    distilled: Sequence[Encoded] = (),
    and_tokens: bool = False,
) -> tuple[nn.Module, list[float]]:
    """Train a LoRA adapter (rank `rank`, every linear layer) on `examples`; returns the merged
    plain model and the loss of every step. The examples in `distilled` (also in `examples`)
    are scored by KL to `model`'s own distribution before training (`and_tokens`: plus
    cross-entropy to their tokens), the rest by cross-entropy."""
    pad_id = pad_token_id(tokenizer)
    with autocast_for(model):  # the numerics of training, so the divergence starts at 0
        teacher = references(model, distilled, pad_id, TEACHER_TOKENS)
    torch.manual_seed(seed)
    config = LoraConfig(r=rank, lora_alpha=2 * rank, target_modules="all-linear", lora_dropout=0.0)
    peft_model = with_lora(model, config)
    losses = fit(
        peft_model,
        examples,
        pad_id,
        steps,
        lr,
        batch_size,
        seed,
        console=console,
        teacher=teacher,
        teacher_and_tokens=and_tokens,
    )
    return peft_model.merge_and_unload().eval(), losses
