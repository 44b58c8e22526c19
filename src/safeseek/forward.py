"""Forward passes for training objectives: logits only where there is a label.

The vocabulary projection dominates small models, and `logits_to_keep` slices hidden states
into a non-contiguous tensor that makes torch expand the LM head's weight per batch row (a
copy of batch x vocab x hidden elements). Gathering the labelled positions into one contiguous
`[N, hidden]` matrix first makes the head a single matrix product over N rows.
"""

from __future__ import annotations

import torch
from torch import nn

from safeseek.data.encode import IGNORE
from safeseek.models.adapters import locate, unwrap
from safeseek.models.geometry import ModelParts


def labelled_logits(
    model: nn.Module,
    input_ids: torch.Tensor,
    labels: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    parts: ModelParts | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(logits [N, vocab], targets [N])` for the N positions whose next token is labelled.

    `labels` is aligned with `input_ids` (Hugging Face convention: position t's label is the
    token at t, predicted from position t - 1; `-100` means no label).
    """
    parts = parts or locate(model)
    out = parts.backbone(input_ids=input_ids, attention_mask=attention_mask, use_cache=False)
    hidden = out[0] if isinstance(out, tuple) else out.last_hidden_state
    predicts = labels[:, 1:] != IGNORE
    logits = unwrap(model).get_output_embeddings()(hidden[:, :-1][predicts])
    cap = getattr(unwrap(model).config.get_text_config(), "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits, labels[:, 1:][predicts]
