"""Label-only logits equal the full model's logits at the labelled positions, every family."""

from __future__ import annotations

import torch

from safeseek.data.encode import IGNORE
from safeseek.forward import labelled_logits


def test_labelled_logits_match_full_forward(family, tiny, batch):
    ids, mask = batch["input_ids"], batch["attention_mask"]
    labels = torch.full_like(ids, IGNORE)
    labels[:, 6:] = ids[:, 6:]
    labels[1, 8] = IGNORE
    logits, targets = labelled_logits(tiny, ids, labels, attention_mask=mask)
    with torch.no_grad():
        full = tiny(input_ids=ids, attention_mask=mask).logits
    predicts = labels[:, 1:] != IGNORE
    assert logits.shape == (int(predicts.sum()), full.shape[-1])
    torch.testing.assert_close(logits, full[:, :-1][predicts], atol=1e-5, rtol=1e-5)
    assert torch.equal(targets, ids[:, 1:][predicts])
