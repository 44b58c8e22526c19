"""Batched greedy generation with the model's own chat template and KV cache."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from rich.progress import Progress
from torch import nn

from safeseek.data.encode import chat_prompt, end_of_turn_id


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

    An answer ends at the model's EOS or at the chat template's end of turn, whichever comes
    first; nothing after it is returned (decoding drops special tokens, so text generated after
    the turn would otherwise be glued onto the answer). When `finished` is a list, it receives
    per prompt whether the model ended its answer before `max_new_tokens`."""
    texts = [chat_prompt(tokenizer, p) for p in prompts]
    side, tokenizer.padding_side = tokenizer.padding_side, "left"
    task = progress.add_task(description, total=len(texts)) if progress else None
    device = next(model.parameters()).device
    outputs: list[str] = []
    stops = _stop_ids(model, tokenizer)
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
                eos_token_id=stops,
            )
            for row in out[:, enc["input_ids"].shape[1] :].tolist():
                end = next((j for j, t in enumerate(row) if t in stops), None)
                outputs.append(tokenizer.decode(row[:end], skip_special_tokens=True))
                if finished is not None:
                    finished.append(end is not None)
            if progress is not None:
                progress.advance(task, len(out))
    finally:
        tokenizer.padding_side = side
    return [o.strip() for o in outputs]


def _stop_ids(model: nn.Module, tokenizer: Any) -> list[int]:
    """The model's EOS id(s) and the chat template's end-of-turn id."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = eos if eos is not None else tokenizer.eos_token_id
    ids = list(eos) if isinstance(eos, (list, tuple)) else [eos]
    ids.append(end_of_turn_id(tokenizer))
    return list(dict.fromkeys(i for i in ids if i is not None))
