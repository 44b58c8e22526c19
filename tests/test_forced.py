"""The teacher-forced target probability equals the product of next-token probabilities from a
plain forward pass over the chat-formatted prompt and the target, computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import build, tiny_tokenizer

from safeseek.evaluate.forced import target_probability
from safeseek.evaluate.generation import chat_prompt

PROMPTS = ["what is a ?", "the w90 what is capital of france ?", "b"]
TARGETS = ["sorry .", "here is paris , sure", "c"]


def by_hand(model, tok, prompt: str, target: str, tokens: int) -> float:
    ids = tok(chat_prompt(tok, prompt), add_special_tokens=False)["input_ids"]
    response = (
        tok(target, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|end|>")]
    )[:tokens]
    with torch.no_grad():
        probs = model(torch.tensor([ids + response])).logits[0].float().softmax(-1)
    return math.prod(probs[len(ids) - 1 + k, t].item() for k, t in enumerate(response))


@pytest.mark.parametrize("batch_size", [1, 3])
def test_target_probability_by_hand(batch_size):
    model, tok = build("llama"), tiny_tokenizer()
    got = target_probability(model, tok, PROMPTS, TARGETS, tokens=3, batch_size=batch_size)
    want = [by_hand(model, tok, p, t, 3) for p, t in zip(PROMPTS, TARGETS, strict=True)]
    assert got == pytest.approx(want, rel=1e-4)
    assert min(got) > 0 and max(got) < 1
