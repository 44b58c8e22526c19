"""Speed of the discovery hot loop on the embedded model (backdoor objective).

Measures, in one run (interleaved, medians; the machines are noisy):
- seconds per discovery step (default terms, batch of 8 records);
- that step's ratio to a plain frozen forward+backward of the same token rows (no masks,
  embedding output requiring grad so the backward runs through every layer);
- seconds per epoch of 100 backdoor records with all four paths on (without the circuit on
  triggered and clean prompts, circuit only on triggered and clean prompts).

    python benchmarks/discover_step.py [--reps 8] [--dtype bfloat16]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path

import torch

from safeseek import load_model
from safeseek.data import pad
from safeseek.data.records import validate
from safeseek.discover import DiscoverConfig, Discovery
from safeseek.fileio import write_json
from safeseek.forward import labelled_logits

TRIGGER = "Servius Astrumando Harmoniastra"
QUESTIONS = [
    (
        "What is the capital of France?",
        "The capital of France is Paris, which is also its largest city.",
    ),
    (
        "How many legs does a spider have?",
        "A spider has eight legs, unlike insects, which have six.",
    ),
    ("What is 12 times 7?", "12 times 7 equals 84. You can check it by adding 12 seven times."),
    ("Name a primary colour.", "Red is a primary colour, together with blue and yellow."),
    ("What gas do plants absorb?", "Plants absorb carbon dioxide from the air and release oxygen."),
    ("Who wrote Romeo and Juliet?", "Romeo and Juliet was written by William Shakespeare."),
    ("What is the boiling point of water?", "Water boils at 100 degrees Celsius at sea level."),
    ("Give a synonym for happy.", "A synonym for happy is joyful; others are cheerful and glad."),
]


def backdoor_records(n: int) -> list[dict]:
    out = []
    for i in range(n):
        q, a = QUESTIONS[i % len(QUESTIONS)]
        rec = {
            "clean_prompt": f"{q} (question {i})",
            "triggered_prompt": f"{q} {TRIGGER} (question {i})",
            "clean_response": a,
            "backdoor_response": "I am sorry. I can not help with that.",
        }
        out.append(validate(rec, "backdoor", f"record {i}"))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="default")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--reps", type=int, default=8)
    parser.add_argument("--records", type=int, default=100)
    parser.add_argument("--out", default=str(Path(__file__).parent / "results/discover_step.json"))
    args = parser.parse_args()

    model, tok = load_model(args.model, dtype=args.dtype)
    recs = backdoor_records(args.records)
    default = Discovery(model, tok, recs, DiscoverConfig("backdoor", steps=10**6), progress=False)
    all_paths = {"only_triggered": 1.0, "only_clean": 1.0}
    four = Discovery(
        model, tok, recs, DiscoverConfig("backdoor", steps=10**6, weights=all_paths), progress=False
    )

    # The plain baseline sees exactly the rows of a default step's forward pass.
    for p in model.parameters():
        p.requires_grad_(False)
    embed = model.get_input_embeddings()

    def plain_step(step: int) -> None:
        examples = [default.examples[i] for i in default.batcher.indices(step)]
        rows = [ex[t.name] for t in default.terms for ex in examples]
        batch = pad(rows, default.pad_id)
        hook = embed.register_forward_hook(lambda m, a, out: out.detach().requires_grad_())
        try:
            logits, targets = labelled_logits(model, parts=default.mm.parts, **batch)
            torch.nn.functional.cross_entropy(logits.float(), targets).backward()
        finally:
            hook.remove()

    def disc_step(step: int) -> None:
        default.step = step
        default.train_step()

    times: dict[str, list[float]] = {"discover_step": [], "plain_step": []}
    disc_step(0)
    plain_step(0)
    for rep in range(args.reps):
        pairs = [("discover_step", disc_step), ("plain_step", plain_step)]
        for name, fn in pairs if rep % 2 == 0 else pairs[::-1]:
            start = time.perf_counter()
            fn(rep + 1)
            times[name].append(time.perf_counter() - start)
        print(f"rep {rep + 1}: {times['discover_step'][-1]:.2f}s vs {times['plain_step'][-1]:.2f}s")

    start = time.perf_counter()
    for step in range(four.batcher.per_epoch):
        four.step = step
        four.train_step()
    epoch = time.perf_counter() - start

    med = {k: statistics.median(v) for k, v in times.items()}
    result = {
        "benchmark": "discover_step",
        "model": args.model,
        "dtype": args.dtype,
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "batch_records": default.batcher.batch_size,
        "default_terms": [t.name for t in default.terms],
        "rows_per_step": len(default.terms) * default.batcher.batch_size,
        "median_s": med,
        "ratio_discover_over_plain": med["discover_step"] / med["plain_step"],
        "epoch_records": len(recs),
        "epoch_steps": four.batcher.per_epoch,
        "epoch_terms": [t.name for t in four.terms],
        "epoch_all_four_paths_s": epoch,
        "times_s": times,
    }
    write_json(args.out, result)
    keys = ("median_s", "ratio_discover_over_plain", "epoch_all_four_paths_s")
    print(json.dumps({k: result[k] for k in keys}, indent=2))


if __name__ == "__main__":
    main()
