"""Objectives: named, weighted loss terms, each computed under one view of the model.

A term says which view runs (`without`: the model with the circuit ablated, G \\ C; `only`:
the circuit alone), which example of a record it reads, and how it scores the response tokens:

- `ce`: cross-entropy to the given response (make the view say this);
- `kl`: KL(full model || view) on the response tokens (keep the view where the full model is);
- `unlikely`: -log(1 - p(response token)) (make the view *not* say this). Bounded below by 0,
  unlike a negative cross-entropy, which would run off to -inf.

Terms that share a view are batched into one forward pass.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from safeseek.data.encode import Encoded, PairEncoder
from safeseek.errors import SafeSeekError

VIEWS = ("without", "only")
LOSSES = ("ce", "kl", "unlikely")


@dataclass(frozen=True)
class Term:
    name: str
    view: str
    loss: str
    weight: float
    kind: str  # the record kind this term reads
    make: Callable[[PairEncoder, dict[str, Any], str], Encoded]
    help: str = ""


@dataclass(frozen=True)
class Objective:
    scenario: str
    terms: tuple[Term, ...]

    def with_weights(self, weights: dict[str, float] | None) -> Objective:
        """A copy with some term weights replaced; unknown names are an error."""
        weights = dict(weights or {})
        names = [t.name for t in self.terms]
        unknown = [n for n in weights if n not in names]
        if unknown:
            raise SafeSeekError(
                f"unknown {self.scenario} term {unknown[0]!r}; terms: {', '.join(names)}"
            )
        return replace(
            self,
            terms=tuple(
                replace(t, weight=float(weights.get(t.name, t.weight))) for t in self.terms
            ),
        )

    @property
    def active(self) -> tuple[Term, ...]:
        return tuple(t for t in self.terms if t.weight > 0)

    def encode(
        self, records: Sequence[dict[str, Any]], encoder: PairEncoder, where: Sequence[str]
    ) -> list[dict[str, Encoded]]:
        """Per record, the encoded example of every active term that reads its kind."""
        return [
            {t.name: t.make(encoder, r, w) for t in self.active if t.kind == r["kind"]}
            for r, w in zip(records, where, strict=True)
        ]


def term_loss(
    loss: str,
    logits: torch.Tensor,
    targets: torch.Tensor,
    reference_logprobs: torch.Tensor | None = None,
    total: int | None = None,
) -> torch.Tensor:
    """One term's loss summed over the labelled positions given and divided by `total`
    (default: their number, i.e. the mean), in fp32. A share of a batch split over processes
    passes the batch's count as `total`, so the shares add up to the batch's mean."""
    logits = logits.float()
    total = logits.shape[0] if total is None else total
    if loss == "ce":
        summed = F.cross_entropy(logits, targets, reduction="sum")
    elif loss == "kl":
        assert reference_logprobs is not None
        logprobs = F.log_softmax(logits, dim=-1)
        summed = F.kl_div(logprobs, reference_logprobs, log_target=True, reduction="sum")
    elif loss == "unlikely":
        p = F.log_softmax(logits, dim=-1).gather(1, targets[:, None]).squeeze(1).exp()
        summed = -torch.log1p(-p.clamp(max=1 - 1e-6)).sum()
    else:
        raise ValueError(loss)
    return summed / max(total, 1)
