"""Label-only logits equal the full model's logits at the labelled positions, every family;
kept distributions (`references`) and training against them (`fit`'s teacher)."""

from __future__ import annotations

import math

import pytest
import torch
from conftest import VOCAB, build

from safeseek.data.encode import IGNORE, Encoded
from safeseek.forward import labelled_logits, references
from safeseek.training import by_length, fit


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


def _examples() -> list[Encoded]:
    g = torch.Generator().manual_seed(2)
    out = []
    for n, prompt in ((9, 5), (6, 2), (11, 7)):
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        out.append(Encoded(ids, [IGNORE] * prompt + ids[prompt:]))
    return out


def test_references_equal_each_example_alone(family, tiny):
    """Kept distributions, batched and padded, equal a forward of each example by itself; an
    example listed twice is computed once, and an unscored one is left out."""
    examples = _examples()
    unscored = examples[0].unscored()
    kept = references(tiny, [*examples, examples[1], unscored], pad_id=0, k=None, batch_size=2)
    assert set(kept) == {id(e) for e in examples}
    top = references(tiny, examples, pad_id=0, k=4)
    for e in examples:
        with torch.no_grad():
            logits = tiny(input_ids=torch.tensor([e.input_ids])).logits[0, :-1]
        alone = logits[torch.tensor(e.labels[1:]) != IGNORE].log_softmax(-1)
        torch.testing.assert_close(kept[id(e)].logp, alone, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(top[id(e)].logp, alone.topk(4).values, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("and_tokens", [False, True])
@pytest.mark.parametrize("family", ["llama", "qwen2"])  # no dropout: fit trains in train mode
def test_fit_scores_taught_examples_by_kl_to_their_teacher(family, and_tokens, monkeypatch):
    """The first step's loss with a teacher equals, by an independent computation, the KL
    from the teacher's rows to the model's on the taught example (plus its cross-entropy with
    `teacher_and_tokens`) plus cross-entropy on the other, over their labelled positions; the
    student starts as its own teacher (0 KL).
    In fp32 (no bf16 autocast), so that the two computations agree to rounding."""
    monkeypatch.setattr("safeseek.training.fast_dtype", lambda device=None: torch.float32)
    tiny = build(family)
    examples = _examples()[:2]
    other = build(family, seed=5)  # a different teacher
    teacher = references(other, examples[:1], pad_id=0, k=None)
    expected = 0.0
    with torch.no_grad():
        for e in examples:
            logits = tiny(input_ids=torch.tensor([e.input_ids])).logits[0, :-1]
            rows = torch.tensor(e.labels[1:]) != IGNORE
            logp = logits[rows].log_softmax(-1)
            if e is examples[0]:
                q = teacher[id(e)].logp
                expected += float((q.exp() * (q - logp)).sum())
            if e is not examples[0] or and_tokens:
                expected += float(-logp.gather(1, torch.tensor(e.labels[1:])[rows][:, None]).sum())
    expected /= sum(e.scored for e in examples)
    for p in tiny.parameters():
        p.requires_grad_(True)
    got = fit(
        tiny, examples, 0, 1, 0.0, batch_size=2, teacher=teacher, teacher_and_tokens=and_tokens
    )
    assert math.isclose(got[0], expected, rel_tol=1e-4)
    self_taught = references(tiny, examples, pad_id=0, k=None)
    assert fit(tiny, examples, 0, 1, 0.0, batch_size=2, teacher=self_taught)[0] < 1e-5


@pytest.mark.parametrize("family", ["llama", "qwen2"])
def test_fit_step_split_by_length_has_the_whole_batchs_gradient(family, monkeypatch):
    """A batch of short and long examples is run as two parts (`by_length`), and the step's
    loss and gradient equal, by an independent computation, those of the whole batch: the
    summed cross-entropy of every example alone over all their labelled positions. In fp32."""
    monkeypatch.setattr("safeseek.training.fast_dtype", lambda device=None: torch.float32)
    tiny = build(family)
    g = torch.Generator().manual_seed(3)
    examples = []
    for n in (6, 7, 5, 30, 28, 31):
        ids = torch.randint(3, VOCAB, (n,), generator=g).tolist()
        examples.append(Encoded(ids, [IGNORE] * 3 + ids[3:]))
    assert [len(p) for p in by_length(examples)] == [3, 3]
    assert len(by_length(examples[:3])) == 1  # similar lengths: one batch
    params = [p for p in tiny.parameters()]
    for p in params:
        p.requires_grad_(True)
    scored = sum(e.scored for e in examples)
    expected_loss = 0.0
    for e in examples:
        logits = tiny(input_ids=torch.tensor([e.input_ids])).logits[0, :-1]
        labels = torch.tensor(e.labels[1:])
        loss = torch.nn.functional.cross_entropy(
            logits, labels, ignore_index=IGNORE, reduction="sum"
        )
        (loss / scored).backward()
        expected_loss += loss.item() / scored
    expected = [p.grad.clone() for p in params]
    for p in params:
        p.grad = None
    got: list[torch.Tensor] = []

    def keep() -> None:
        got.extend(p.grad.clone() for p in params)

    losses = fit(tiny, examples, 0, 1, 0.0, batch_size=6, before_step=keep)
    assert math.isclose(losses[0], expected_loss, rel_tol=1e-5)
    for a, b in zip(got, expected, strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-4)
