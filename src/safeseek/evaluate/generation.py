"""Batched greedy generation with the model's own chat template and KV cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.progress import Progress
from torch import nn


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    """`prompt` as a user turn in the tokenizer's chat template (plain text without one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


@torch.no_grad()
def generate(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    max_new_tokens: int = 48,
    batch_size: int = 8,
    progress: Progress | None = None,
    description: str = "generating",
    finished: list[bool] | None = None,
) -> list[str]:
    """Greedy completions of `prompts` (chat-templated), left-padded in batches.

    When `finished` is a list, it receives per prompt whether the model ended its answer
    before `max_new_tokens` (rather than being cut off)."""
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    task = progress.add_task(description, total=len(texts)) if progress else None
    device = next(model.parameters()).device
    outputs: list[str] = []
    stops = set(_stop_ids(model, tokenizer)) if finished is not None else set()
    try:
        for i in range(0, len(texts), batch_size):
            enc = tokenizer(
                texts[i : i + batch_size],
                return_tensors="pt",
                padding=True,
                add_special_tokens=not getattr(tokenizer, "chat_template", None),
            ).to(device)
            out = model.generate(
                **enc,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                pad_token_id=tokenizer.pad_token_id,
            )
            new = out[:, enc["input_ids"].shape[1] :]
            outputs += tokenizer.batch_decode(new, skip_special_tokens=True)
            if finished is not None:
                finished += [any(int(t) in stops for t in row) for row in new]
            if progress is not None:
                progress.advance(task, len(new))
    finally:
        tokenizer.padding_side = side
    return [o.strip() for o in outputs]


def _stop_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    return list(eos) if isinstance(eos, (list, tuple)) else [eos]
