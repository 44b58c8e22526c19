"""What every baseline reads: the behaviour's examples, the utility examples, and losses.

A baseline scores each unit (head, neuron) of a frozen model from two example sets made from
the scenario's records by the scenario's own objective terms (`Scenario.behaviour_term` and
`utility_term`, one term or several):
- behaviour: the prompt with the response that shows the behaviour (backdoor: triggered prompt
  -> backdoor response; alignment: harmful prompt -> refusal; custom: prompt -> target);
- utility: what must be kept (backdoor: clean prompt -> clean response, and its preservation
  prompts; alignment: benign prompt -> the model's own answer; custom: preservation prompts).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from safeseek.data.encode import Encoded, PairEncoder, pad
from safeseek.errors import SafeSeekError
from safeseek.forward import labelled_logits
from safeseek.models.adapters import locate
from safeseek.models.geometry import ModelParts, out_in
from safeseek.objectives import objective
from safeseek.scenarios import get_scenario


@dataclass
class Examples:
    behaviour: list[Encoded]
    utility: list[Encoded]


def examples(
    tokenizer: Any,
    records: Sequence[dict[str, Any]],
    scenario: str,
    limit: int | None = None,
    max_length: int = 512,
    max_response_tokens: int | None = 32,
) -> Examples:
    """The first `limit` behaviour examples of `records`, and the first `limit` of each
    utility term's (a backdoor's clean prompts and its preservation prompts)."""
    spec = get_scenario(scenario)
    names = (spec.behaviour_term, *spec.utility_term)
    base = objective(scenario)
    obj = base.with_weights({t.name: float(t.name in names) for t in base.terms})
    encoder = PairEncoder(tokenizer, max_length, max_response_tokens)
    where = [r.get("_where", f"record {i + 1}") for i, r in enumerate(records)]
    encoded = obj.encode(records, encoder, where)

    def first(name: str) -> list[Encoded]:
        return [ex[name] for ex in encoded if name in ex][:limit]

    out = Examples(
        behaviour=first(spec.behaviour_term),
        utility=[e for name in spec.utility_term for e in first(name)],
    )
    if not out.behaviour:
        raise SafeSeekError(
            f"no record shows the {scenario} behaviour ({spec.behaviour_term} examples)"
        )
    return out


def batches(
    rows: Sequence[Encoded], pad_id: int, device: torch.device, size: int = 8
) -> Iterator[dict[str, torch.Tensor]]:
    for i in range(0, len(rows), size):
        yield {k: v.to(device) for k, v in pad(list(rows[i : i + size]), pad_id).items()}


def summed_loss(
    model: nn.Module, parts: ModelParts, batch: dict[str, torch.Tensor]
) -> torch.Tensor:
    """Cross-entropy of the labelled tokens of `batch`, summed (divide by the token count)."""
    logits, targets = labelled_logits(model, parts=parts, **batch)
    return F.cross_entropy(logits.float(), targets, reduction="sum")


def mean_loss(model: nn.Module, rows: Sequence[Encoded], pad_id: int) -> float:
    """Mean cross-entropy per labelled token of `rows` (no gradient)."""
    parts, device = locate(model), next(model.parameters()).device
    total = sum(e.scored for e in rows)
    with torch.no_grad():
        loss = sum(float(summed_loss(model, parts, b)) for b in batches(rows, pad_id, device))
    return loss / max(total, 1)


def per_input_channel(module: nn.Module, values: torch.Tensor) -> torch.Tensor:
    """Sum |values| (shaped like `module.weight`) over outputs: one number per input channel
    (`models/geometry.py`: Linear stores [out, in], GPT-2's Conv1D [in, out])."""
    return out_in(module, values.abs().float()).sum(0)
