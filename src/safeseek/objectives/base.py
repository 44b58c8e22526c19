"""Objectives: named, weighted loss terms, each computed under one view of the model.

A term says which view runs (`without`: the model with the circuit ablated, G \\ C; `only`:
the circuit alone), which example of a record it reads, and how it scores the response tokens:

- `ce`: cross-entropy to the given response (make the view say this);
- `kl`: KL(full model || view) on the response tokens, plus, at each row's first token,
  softplus(log q_1 - log p_1 + `MARGIN`), p_1 the view's probability of the full model's
  likeliest token and q_1 that of its strongest rival (keep the view where the full model is,
  and keep its greedy first choice);
- `unlikely`: per row, the mean over k = 1..`ONSET_TOKENS` of -log(1 - P_k), P_k the joint
  probability of the response's first k tokens, plus softplus(log p_1 - log q_1 + `MARGIN`),
  q_1 the likeliest other first token (make the view *not* say this, from its first token on).
  Bounded below by 0, unlike a negative cross-entropy, which would run off to -inf.

Why prefixes of the onset, not each token: under teacher forcing the tokens after the first few
follow from the prefix whatever the trigger ("sorry" -> "."), and -log(1 - p_t) keeps a gradient
of p_t on every such token even at p_t -> 1; on tiny backdoored organisms that per-token form
drowned the tokens where the behaviour is decided. The gradient of -log(1 - P_k) reaches token
t through (1 - p_t), so predictable tokens add nothing. Every prefix, not only the whole onset:
a joint probability can be lowered by breaking any one token, and circuits found that way made
the model say "sorry sorry sorry" instead of "sorry ." -- the behaviour, unbroken.

Why the margins: greedy decoding says the target when its first token is the likeliest, however
unlikely it is. On tiny organisms, circuits stalled where P("sorry") had fallen from 0.94 to
0.11 -- -log(1 - 0.11) is 0.12 and its gradient nearly gone -- with every other first token
below it, so the model still answered "sorry" every time. The softplus of the log-odds against
the strongest rival keeps a gradient until the target is `MARGIN` nats below it. Pushed that
hard, circuits began to flip clean answers whose KL was small on average ("what is v ?" -> "q"
instead of "w"); the same margin on the full model's first choice keeps them
(benchmarks/results/robustness.md).

Terms that share a view are batched into one forward pass. The full model never changes during
a run, so `kl`'s reference distribution is computed once per example and kept (`Reference`):
the `k` likeliest tokens at each labelled position and the mass of the rest, which makes the
divergence that of the k + 1 bins (a lower bound of the full KL, equal when k is the
vocabulary); with `k` None the full rows are kept and the divergence is exact.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any

import torch
import torch.nn.functional as F

from safeseek.data.encode import Encoded, PairEncoder
from safeseek.errors import SafeSeekError
from safeseek.forward import Reference

# Response tokens whose joint probability the `unlikely` loss drives down (see above).
ONSET_TOKENS = 4
# How far (in nats) the margin terms push a first token below, or keep it above, its rival.
MARGIN = 0.5


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
    reference: Reference | None = None,
    total: int | None = None,
    lengths: Sequence[int] | None = None,
) -> torch.Tensor:
    """One term's loss, in fp32, summed and divided by `total`.

    `ce` and `kl` sum over the labelled positions given (`kl`'s first-token margin adds one
    entry per row); `total` defaults to their number (the mean). `unlikely` sums over rows.
    `lengths` gives each row's number of labelled positions, in order (default: one row), and
    for `unlikely` `total` defaults to the number of rows. A share of a
    batch split over processes passes the batch's count as `total`, so the shares add up to the
    batch's mean.
    """
    logits = logits.float()
    lengths = [logits.shape[0]] if lengths is None else list(lengths)
    if loss == "unlikely":
        total = sum(1 for n in lengths if n) if total is None else total
        return _unlikely_rows(logits, targets, lengths).sum() / max(total, 1)
    total = logits.shape[0] if total is None else total
    if loss == "ce":
        summed = F.cross_entropy(logits, targets, reduction="sum")
    elif loss == "kl":
        assert reference is not None and len(reference) == logits.shape[0]
        logprobs = F.log_softmax(logits, dim=-1)
        summed = reference.divergence(logprobs)
        first = _first_positions(lengths, logits.device)
        if len(first):
            choice = reference[first].choice()
            kept, rival = _against_rival(logprobs[first], choice)
            summed = summed + F.softplus(rival - kept + MARGIN).sum()
    else:
        raise ValueError(loss)
    return summed / max(total, 1)


def _first_positions(lengths: list[int], device: torch.device) -> torch.Tensor:
    """Index of each labelled row's first position, rows laid end to end."""
    starts = torch.tensor([0, *lengths[:-1]], dtype=torch.long).cumsum(0)
    return starts[torch.tensor(lengths) > 0].to(device)


def _against_rival(logp: torch.Tensor, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per row: log p of `tokens`, and that of the likeliest other token."""
    mine = logp.gather(1, tokens[:, None]).squeeze(1)
    rival = logp.scatter(1, tokens[:, None], float("-inf")).amax(1)
    return mine, rival


def _unlikely_rows(logits: torch.Tensor, targets: torch.Tensor, lengths: list[int]) -> torch.Tensor:
    """Per row with labels: the mean over k = 1..ONSET_TOKENS of -log(1 - P_k), P_k the joint
    probability of the response's first k tokens, plus the first token's margin term."""
    logp = F.log_softmax(logits, dim=-1)
    token_logp = logp.gather(1, targets[:, None]).squeeze(1)
    first = _first_positions(lengths, logits.device)
    if not len(first):
        return token_logp.new_zeros(0)
    mine, rival = _against_rival(logp[first], targets[first])
    rows = []
    for s, n in zip(first.tolist(), (n for n in lengths if n), strict=True):
        prefix_logp = token_logp[s : s + min(n, ONSET_TOKENS)].cumsum(0)
        # -log(1 - exp(x)) = -log(-expm1(x)); x kept below log(1 - 1e-6) so the loss is finite.
        rows.append(-torch.log(-torch.expm1(prefix_logp.clamp(max=math.log1p(-1e-6)))).mean())
    return torch.stack(rows) + F.softplus(mine - rival + MARGIN)
