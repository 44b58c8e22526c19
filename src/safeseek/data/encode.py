"""Chat-templated (prompt, response) pairs as token ids with labels on the response only."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from safeseek.errors import SafeSeekError

# The label of a position that is not scored (torch's cross-entropy ignore_index).
IGNORE = -100


def pad_token_id(tokenizer: Any) -> int:
    """The token id that pads batches: the tokenizer's pad token, else 0 (padded positions
    are masked out and unlabelled, so the id itself never matters)."""
    return tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0


@dataclass(frozen=True)
class Encoded:
    """One training sequence: prompt tokens then response tokens (labels on the latter)."""

    input_ids: list[int]
    labels: list[int]

    @property
    def scored(self) -> int:
        """Positions whose next token is labelled (the rows of `labelled_logits`)."""
        return sum(label != IGNORE for label in self.labels[1:])

    def unscored(self) -> Encoded:
        """The same tokens with no labels: a stand-in row that adds nothing to a loss."""
        return Encoded(self.input_ids, [IGNORE] * len(self.labels))


def chat_prompt(tokenizer: Any, prompt: str) -> str:
    """`prompt` as a user turn in the tokenizer's chat template (plain text without one)."""
    if getattr(tokenizer, "chat_template", None):
        return tokenizer.apply_chat_template(
            [{"role": "user", "content": prompt}], tokenize=False, add_generation_prompt=True
        )
    return prompt


def end_of_turn_id(tokenizer: Any) -> int | None:
    """The token that ends an assistant turn (the template's, else EOS)."""
    if getattr(tokenizer, "chat_template", None):
        probe = tokenizer.apply_chat_template(
            [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}],
            tokenize=False,
        )
        tail = probe[probe.rindex("y") + 1 :]
        ids = tokenizer(tail, add_special_tokens=False)["input_ids"]
        special = set(tokenizer.all_special_ids)
        for token in ids:
            if token in special:
                return token
    return tokenizer.eos_token_id


class PairEncoder:
    """Encodes (prompt, response) pairs for one tokenizer, within a context budget."""

    def __init__(
        self, tokenizer: Any, max_length: int = 512, max_response_tokens: int | None = None
    ) -> None:
        self.tokenizer = tokenizer
        self.max_length = max_length
        self.max_response_tokens = max_response_tokens
        self.eot = end_of_turn_id(tokenizer)
        self.templated = bool(getattr(tokenizer, "chat_template", None))

    def prompt_ids(self, prompt: str, where: str = "prompt") -> list[int]:
        text = chat_prompt(self.tokenizer, prompt)
        ids = self.tokenizer(text, add_special_tokens=not self.templated)["input_ids"]
        if len(ids) >= self.max_length:
            raise SafeSeekError(
                f"{where}: prompt is {len(ids)} tokens, over the context budget of "
                f"{self.max_length} (shorten it or raise --max-length)"
            )
        return ids

    def prompt(self, prompt: str, where: str = "record") -> Encoded:
        """The templated prompt alone, up to where the response would start; unlabelled."""
        ids = self.prompt_ids(prompt, where)
        return Encoded(input_ids=ids, labels=[IGNORE] * len(ids))

    def pair(self, prompt: str, response: str, where: str = "record") -> Encoded:
        """Prompt + response + end of turn; a response longer than `max_response_tokens` or
        than the context budget is cut."""
        prompt_ids = self.prompt_ids(prompt, where)
        response_ids = self.tokenizer(response, add_special_tokens=False)["input_ids"]
        if self.eot is not None:
            response_ids = [*response_ids, self.eot]
        keep = self.max_length - len(prompt_ids)
        if self.max_response_tokens is not None:
            keep = min(keep, self.max_response_tokens)
        response_ids = response_ids[:keep]
        return Encoded(
            input_ids=prompt_ids + response_ids,
            labels=[IGNORE] * len(prompt_ids) + response_ids,
        )


def pad(examples: list[Encoded], pad_id: int) -> dict[str, torch.Tensor]:
    """Right-pad to the longest example of this batch (dynamic padding)."""
    width = max(len(e.input_ids) for e in examples)
    ids = torch.full((len(examples), width), pad_id, dtype=torch.long)
    labels = torch.full((len(examples), width), IGNORE, dtype=torch.long)
    mask = torch.zeros((len(examples), width), dtype=torch.long)
    for row, e in enumerate(examples):
        n = len(e.input_ids)
        ids[row, :n] = torch.tensor(e.input_ids)
        labels[row, :n] = torch.tensor(e.labels)
        mask[row, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "labels": labels}
