"""A teacher-forced view of a fixed-output backdoor: how likely the model is to begin the
target after a prompt. Greedy decoding shows only each prompt's top choice; a backdoor that an
ablation weakened but did not remove (the target still a close second) shows here, and so does
one that paraphrases its way around the exact string."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from safeseek.data.encode import IGNORE, PairEncoder, pad, pad_token_id
from safeseek.forward import labelled_logits

# The target's first tokens that count: its opening is what a paraphrase keeps.
TOKENS = 4


@torch.no_grad()
def target_probability(
    model: nn.Module,
    tokenizer: Any,
    prompts: Sequence[str],
    targets: Sequence[str],
    tokens: int = TOKENS,
    batch_size: int = 16,
) -> list[float]:
    """P(the target's first `tokens` tokens | the chat-formatted prompt), one per prompt: the
    product of their teacher-forced probabilities, as the model generates them."""
    encoder = PairEncoder(tokenizer, max_length=1 << 20, max_response_tokens=tokens)
    pad_id = pad_token_id(tokenizer)
    device = next(model.parameters()).device
    out: list[float] = []
    for i in range(0, len(prompts), batch_size):
        rows = [
            encoder.pair(p, t)
            for p, t in zip(prompts[i : i + batch_size], targets[i : i + batch_size], strict=True)
        ]
        batch = {k: v.to(device) for k, v in pad(rows, pad_id).items()}
        logits, labels = labelled_logits(model, **batch)
        logp = torch.log_softmax(logits.float(), -1).gather(1, labels[:, None])[:, 0]
        counts = (batch["labels"][:, 1:] != IGNORE).sum(1).tolist()
        out += [s.sum().exp().item() for s in torch.split(logp, counts)]
    return out
