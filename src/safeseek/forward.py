"""Forward passes for training objectives: logits only where there is a label.

The vocabulary projection dominates small models, and `logits_to_keep` slices hidden states
into a non-contiguous tensor that makes torch expand the LM head's weight per batch row (a
copy of batch x vocab x hidden elements). Gathering the labelled positions into one contiguous
`[N, hidden]` matrix first makes the head a single matrix product over N rows.

`Reference` keeps a model's distribution at those positions, for the KL terms that compare a
trained or masked model with the model before (discovery's preservation terms, organisms'
self-distillation).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from safeseek.data.encode import IGNORE, Encoded, pad
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


@dataclass(frozen=True)
class Reference:
    """The full model's log-probabilities at some labelled positions, rows in order.

    `tokens` None: `logp` holds full rows `[n, vocab]`. Otherwise `logp[i]` holds the
    log-probabilities of `tokens[i]`, the row's `k` likeliest tokens (likeliest first), and
    `tail[i]` the log of the mass of every other token.
    """

    logp: torch.Tensor
    tokens: torch.Tensor | None = None
    tail: torch.Tensor | None = None

    @classmethod
    def of(cls, logprobs: torch.Tensor, k: int | None = None) -> Reference:
        """Keep full rows (`k` None or at least the vocabulary) or the top `k` and the tail."""
        logprobs = logprobs.float()
        if k is None or k >= logprobs.shape[-1]:
            return cls(logprobs)
        top, tokens = logprobs.topk(k, dim=-1)
        tail = logprobs.scatter(-1, tokens, float("-inf")).logsumexp(-1)
        return cls(top, tokens.to(torch.int32), tail)

    @classmethod
    def cat(cls, parts: Sequence[Reference]) -> Reference:
        full = parts[0].tokens is None

        def join(name: str) -> torch.Tensor:
            return torch.cat([getattr(p, name) for p in parts])

        return cls(join("logp")) if full else cls(join("logp"), join("tokens"), join("tail"))

    def __getitem__(self, rows: slice | torch.Tensor) -> Reference:
        if self.tokens is None:
            return Reference(self.logp[rows])
        assert self.tail is not None
        return Reference(self.logp[rows], self.tokens[rows], self.tail[rows])

    def __len__(self) -> int:
        return self.logp.shape[0]

    @property
    def nbytes(self) -> int:
        kept = (self.logp, self.tokens, self.tail)
        return sum(t.numel() * t.element_size() for t in kept if t is not None)

    def choice(self) -> torch.Tensor:
        """The full model's likeliest token at each position."""
        return self.logp.argmax(-1) if self.tokens is None else self.tokens[:, 0].long()

    def divergence(self, logprobs: torch.Tensor) -> torch.Tensor:
        """Sum over positions of KL(reference || view), `logprobs` the view's full rows."""
        if self.tokens is None:
            return F.kl_div(logprobs, self.logp, log_target=True, reduction="sum")
        assert self.tail is not None
        tokens = self.tokens.long()
        top = (self.logp.exp() * (self.logp - logprobs.gather(1, tokens))).sum()
        view_tail = logprobs.scatter(1, tokens, float("-inf")).logsumexp(-1)
        # A tail of zero mass adds nothing (and would be 0 * inf).
        has_tail = self.tail > float("-inf")
        tail = self.tail.exp() * (self.tail - view_tail)
        return top + torch.where(has_tail, tail, torch.zeros_like(tail)).sum()


@torch.no_grad()
def references(
    model: nn.Module,
    examples: Sequence[Encoded],
    pad_id: int,
    k: int | None,
    batch_size: int = 8,
    parts: ModelParts | None = None,
    advance: Callable[[int], None] | None = None,
) -> dict[int, Reference]:
    """`model`'s distribution at the labelled positions of each scored example, keyed by the
    example's `id` (the caller holds the examples): its top `k` tokens and the tail, or full
    rows with `k` None. `advance(n)` is told of every `n` examples done (a progress bar)."""
    parts = parts or locate(model)
    device = next(model.parameters()).device
    chosen = list({id(e): e for e in examples if e.scored}.values())
    kept: dict[int, Reference] = {}
    for i in range(0, len(chosen), batch_size):
        part = chosen[i : i + batch_size]
        batch = {key: v.to(device) for key, v in pad(part, pad_id).items()}
        logits, _ = labelled_logits(model, parts=parts, **batch)
        rows = Reference.of(torch.log_softmax(logits.float(), dim=-1), k)
        start = 0
        for e in part:
            kept[id(e)] = rows[start : start + e.scored]
            start += e.scored
        if advance is not None:
            advance(len(part))
    return kept
